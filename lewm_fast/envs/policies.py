"""Data-collection policies: a scripted expert per environment, uniform random exploration, and their mixture.

Every policy has ``reset(seed)`` (call it at the start of each episode) and ``act(obs) -> float32 (action_dim,)`` in
[-1, 1], where ``obs`` is the environment's observation dict.

``DEFAULT_POLICY`` is the kind each LeWM training set was collected with (stable-worldmodel 0.1.1): Two-Room's expert
with action noise 2.0 (``scripts/data/collect_tworooms.py``), PushT's expert demonstrations (DINO-WM's set; a scripted
expert here), Reacher's uniform random actions (``dmc/reacher_random``), Cube's OGBench oracle with its per-episode
noise (``scripts/data/collect_cube.py``). Expert actions always carry Gaussian noise, so even expert episodes explore.

Mixture ("mixed", lewm_fast's own): at each ``reset`` the policy draws whether the coming episode is driven by the
expert (probability ``expert_fraction``, by default ``DEFAULT_EXPERT_FRACTION``) or by uniform random actions.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

EXPERTS = {
    "two_room": ("two_room", "TwoRoomExpert"),
    "pusht": ("pusht", "PushTExpert"),
    "reacher": ("reacher", "ReacherExpert"),
    "cube": ("cube", "CubeExpert"),
}
DEFAULT_POLICY = {"two_room": "expert", "pusht": "expert", "reacher": "random", "cube": "expert"}
DEFAULT_EXPERT_FRACTION = {"two_room": 0.5, "pusht": 0.8, "reacher": 0.3, "cube": 0.8}
POLICY_KINDS = ("expert", "random", "mixed")


class Policy(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions in [-1, 1]^action_dim."""

    def __init__(self, env: Any, seed: int | None = None) -> None:
        self.action_dim = int(env.action_space.shape[0])
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)


class MixedPolicy:
    """Per episode, the expert with probability ``expert_fraction``, otherwise uniform random actions."""

    def __init__(self, expert: Policy, random: RandomPolicy, expert_fraction: float, seed: int | None = None) -> None:
        if not 0.0 <= expert_fraction <= 1.0:
            raise ValueError(f"expert_fraction must be in [0, 1], got {expert_fraction}")
        self.expert, self.random, self.expert_fraction = expert, random, float(expert_fraction)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        seeds = np.random.SeedSequence(seed).spawn(3)
        self.use_expert = bool(np.random.default_rng(seeds[0]).random() < self.expert_fraction)
        self.expert.reset(int(seeds[1].generate_state(1)[0]))
        self.random.reset(int(seeds[2].generate_state(1)[0]))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return (self.expert if self.use_expert else self.random).act(obs)


def make_policy(
    name: str, env: Any, kind: str | None = None, seed: int | None = None, expert_fraction: float | None = None
) -> Policy:
    """A data-collection policy for environment ``name`` acting in ``env``.

    kind: "expert" (scripted, noisy), "random" (uniform) or "mixed" (per-episode choice; ``expert_fraction`` defaults
    to ``DEFAULT_EXPERT_FRACTION[name]``); None: ``DEFAULT_POLICY[name]``, the official collection policy.
    """
    if name not in EXPERTS:
        raise ValueError(f"unknown environment {name!r}; expected one of {', '.join(EXPERTS)}")
    kind = DEFAULT_POLICY[name] if kind is None else kind
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {', '.join(POLICY_KINDS)}")
    if expert_fraction is not None and kind != "mixed":
        raise ValueError(f"expert_fraction applies to kind='mixed' only, got kind={kind!r}")
    if kind == "random":
        return RandomPolicy(env, seed)
    module, cls = EXPERTS[name]
    expert = getattr(importlib.import_module(f"{__package__}.{module}"), cls)(env, seed)
    if kind == "expert":
        return expert
    fraction = DEFAULT_EXPERT_FRACTION[name] if expert_fraction is None else float(expert_fraction)
    return MixedPolicy(expert, RandomPolicy(env), fraction, seed)
