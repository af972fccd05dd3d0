"""Roll out data-collection policies in an environment and write the episodes to an HDF5 episode file (lewm_fast's
layout or stable-worldmodel's)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..envs import ENV_NAMES, POLICY_KINDS, make, make_policy
from ..envs.base import check_image_size
from ..envs.policies import DEFAULT_EXPERT_FRACTION, DEFAULT_POLICY, MixedPolicy
from .h5format import COMPRESSIONS, EpisodeFileError, open_h5
from .layout import LAYOUT_NAMES, LAYOUTS, WRITERS, detect_layout

# Actions per episode (at most: a Two-Room episode ends earlier at its target). Two-Room: stable-worldmodel 0.1.1's
# scripts/data/config/default.yaml (max_episode_steps 100); the others as reported for the LeWM datasets: 200-step
# episodes in dmc/reacher_random and ogbench/cube_single_expert, 196 steps on average in DINO-WM's pusht_expert_train.
DEFAULT_EPISODE_LEN = {"two_room": 100, "pusht": 200, "reacher": 200, "cube": 200}


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(environment reset seed, policy seed) of episode ``index``: a pure function of (seed, index), so a resumed
    collection writes the same episodes as an uninterrupted one."""
    env_seed, policy_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(env_seed), int(policy_seed)


def rollout(env: Any, policy: Any, episode_len: int, seed: int) -> dict[str, np.ndarray]:
    """Reset ``env`` with ``seed`` and run ``episode_len`` actions of ``policy`` (already reset for this episode), or
    fewer when the environment ends the episode (``terminated``: Two-Room at its target).

    Returns T + 1 <= episode_len + 1 steps: pixels, action (the action applied at each step, as ``check_action``
    passes it on; NaN after the last frame), proprio and state.
    """
    base = env.unwrapped
    steps = episode_len + 1
    out = {
        "pixels": np.empty((steps, base.image_size, base.image_size, 3), np.uint8),
        "action": np.full((steps, base.action_dim), np.nan, np.float32),
        "proprio": np.empty((steps, base.proprio_dim), np.float32),
        "state": np.empty((steps, base.state_dim), np.float64),
    }
    obs, _ = env.reset(seed=seed)
    last = episode_len  # index of the episode's last frame
    for t in range(steps):
        out["pixels"][t], out["proprio"][t], out["state"][t] = obs["pixels"], obs["proprio"], obs["state"]
        if t == last:
            break
        action = base.check_action(policy.act(obs))
        out["action"][t] = action
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            last = t + 1  # the frame the episode ended on
    return {key: value[:last + 1] for key, value in out.items()}


def _check_layout(path: Path, format: str) -> None:
    """EpisodeFileError unless the episode file at ``path`` has the layout ``format``."""
    with open_h5(path) as f:
        found = detect_layout(f)
    if found != format:
        raise EpisodeFileError(f"cannot append to {path}: it holds {LAYOUT_NAMES[found]} episodes (format={found}), "
                               f"this run has format={format}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so an interrupt never lands in the middle of an HDF5 write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda s, _frame: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def collect(
    env_name: str,
    episodes: int,
    out: str | Path,
    episode_len: int | None = None,
    image_size: int = 224,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    append: bool = False,
    policy: str | None = None,
    expert_fraction: float | None = None,
    compression: str = "gzip",
    env_kwargs: dict[str, Any] | None = None,
    format: str = "lewm",
) -> Path:
    """Collect ``episodes`` episodes of ``env_name`` into the HDF5 episode file ``out`` and return its path.

    episode_len: actions per episode (each episode stores episode_len + 1 frames, fewer when the environment ends it:
    Two-Room at its target unless ``env_kwargs={"terminate_at_target": False}``); None: ``DEFAULT_EPISODE_LEN``.
    policy: "expert", "random" or "mixed" (per-episode choice, ``expert_fraction`` defaulting to the env's value in
    ``lewm_fast.envs.policies.DEFAULT_EXPERT_FRACTION``); None: the env's official collection policy,
    ``lewm_fast.envs.policies.DEFAULT_POLICY`` (expert for two_room, pusht and cube, random for reacher).
    An existing ``out`` is an error unless ``overwrite`` (start afresh) or ``append`` (keep its episodes and collect
    until it holds ``episodes``; the settings and the layout must match the ones it was written with). Episode i is
    seeded from (seed, i) only, so an interrupted and resumed collection equals an uninterrupted one.
    format: "lewm" (lewm_fast's layout, ``h5format``) or "swm" (stable-worldmodel's ``HDF5Dataset`` layout,
    ``swm_format``; no per-episode seeds or expert flags).
    """
    if env_name not in ENV_NAMES:
        raise ValueError(f"unknown environment {env_name!r}; expected one of {', '.join(ENV_NAMES)}")
    episodes = _check_int(episodes, "episodes", 1)
    episode_len = _check_int(DEFAULT_EPISODE_LEN[env_name] if episode_len is None else episode_len, "episode_len", 1)
    image_size = check_image_size(image_size)
    seed = _check_int(seed, "seed", 0)
    policy = DEFAULT_POLICY[env_name] if policy is None else policy
    if policy not in POLICY_KINDS:
        raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICY_KINDS)}")
    if expert_fraction is not None and policy != "mixed":
        raise ValueError(f"expert_fraction applies to policy='mixed' only, got policy={policy!r}")
    if expert_fraction is None:
        expert_fraction = {"expert": 1.0, "random": 0.0}.get(policy, DEFAULT_EXPERT_FRACTION[env_name])
    if not 0.0 <= float(expert_fraction) <= 1.0:
        raise ValueError(f"expert_fraction must be in [0, 1], got {expert_fraction}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if format not in LAYOUTS:
        raise ValueError(f"format must be one of {', '.join(LAYOUTS)}, got {format!r}")
    if overwrite and append:
        raise ValueError("overwrite and append exclude each other")
    out = Path(out)
    if out.exists() and not (overwrite or append):
        raise FileExistsError(f"{out} already exists; pass overwrite=true to replace it or append=true to continue it")
    if out.is_dir():
        raise IsADirectoryError(f"out must be a file path, {out} is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot write episodes to {out}: cannot create its directory ({exc})") from exc

    env = make(env_name, image_size=image_size, **(env_kwargs or {}))
    try:
        base = env.unwrapped
        attrs = {"env": env_name, "image_size": image_size, "seed": seed, "policy": policy,
                 "expert_fraction": float(expert_fraction), "episode_len": episode_len,
                 "env_kwargs": json.dumps(env_kwargs or {}, sort_keys=True)}
        try:
            if append and out.exists():
                _check_layout(out, format)
                writer = WRITERS[format].append(out, attrs=attrs)
            else:
                writer = WRITERS[format].create(
                    out, env=env_name, image_size=image_size, action_dim=base.action_dim,
                    proprio_dim=base.proprio_dim, state_dim=base.state_dim, compression=compression, attrs=attrs,
                )
        except OSError as exc:
            raise OSError(f"cannot write episodes to {out}: {exc}") from exc
        agent = make_policy(env_name, env, policy, seed=seed,
                            expert_fraction=float(expert_fraction) if policy == "mixed" else None)
        with writer, tqdm(total=episodes, initial=min(writer.num_episodes, episodes), unit="ep",
                          desc=f"lewm-collect {env_name}", disable=not progress) as bar:
            for index in range(writer.num_episodes, episodes):
                env_seed, policy_seed = episode_seeds(seed, index)
                agent.reset(policy_seed)
                episode = rollout(env, agent, episode_len, env_seed)
                expert = agent.use_expert if isinstance(agent, MixedPolicy) else policy == "expert"
                with _signals_deferred():
                    writer.write_episode(**episode, seed=env_seed, expert=expert)
                bar.update(1)
    finally:
        env.close()
    return out
