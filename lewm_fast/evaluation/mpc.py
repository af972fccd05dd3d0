"""Goal-conditioned MPC evaluation of a trained LeWM in its environment (SPEC §4).

Per episode (seeded) a goal source gives a start state and a goal state and leaves the env in the start state:
``DatasetGoals`` (stable-worldmodel's protocol) takes a random step t of a random episode of an episode file and the
state ``goal_offset`` steps later in that episode; ``ExpertGoals`` resets the env and rolls the scripted expert
``goal_offset`` env steps. The goal frame is rendered from the goal state. Then receding-horizon MPC: each replan
encodes the last ``history_size`` frames (one every ``frameskip`` env steps) with the action blocks between them,
plans with the CEM planner, and executes the first ``receding_horizon`` blocks (``frameskip`` env actions each,
un-normalised with the training data's statistics). An episode succeeds when ``env.is_success(state, goal_state)``
holds after some env step within ``budget`` steps (the env knows the goal, ``set_goal_state``: Reacher ends an action
at the physics sub-step that reaches it, as stable-worldmodel does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.actions import ActionCodec
from ..reference.lewm import LeWM
from ..reference.vit import preprocess_frames


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    steps: int  # env steps taken (until success or the budget)
    plan_latencies_s: List[float] = field(default_factory=list)
    frames: List[np.ndarray] = field(default_factory=list, repr=False)  # every rendered frame, when recorded
    goal_frame: Optional[np.ndarray] = field(default=None, repr=False)

    def summary(self) -> Dict[str, Any]:
        out = asdict(self)
        out.pop("frames")
        out.pop("goal_frame")
        return out


class ExpertGoals:
    """``goals(seed) -> (start_state, goal_state)``: reset with ``seed`` and roll the scripted expert ``goal_offset``
    env steps (a held-out trajectory); the env is left in the start state."""

    def __init__(self, env: Any, policy: Any, goal_offset: int):
        self.env, self.policy, self.goal_offset = env, policy, goal_offset

    def __call__(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        obs, _ = self.env.reset(seed=seed)
        if hasattr(self.policy, "reset"):
            self.policy.reset(seed=seed)
        sim = self.env.unwrapped
        start = np.array(sim.get_state(), copy=True)
        for _ in range(self.goal_offset):
            obs, *_ = self.env.step(self.policy.act(obs))
        goal = np.array(sim.get_state(), copy=True)
        sim.set_state(start)
        return start, goal


class DatasetGoals:
    """``goals(seed) -> (start_state, goal_state)`` from an episode file (either layout; see ``lewm_fast.data``):
    a uniformly drawn episode among ``episodes`` (those longer than ``goal_offset`` steps), a uniform step t in it,
    and the simulator states at steps t and t + ``goal_offset`` of that episode (never across its end). The draw
    depends on ``seed`` only. The env is reset with ``seed`` and restored to the start state."""

    def __init__(self, env: Any, path: os.PathLike, goal_offset: int, episodes: Optional[Sequence[int]] = None,
                 columns: Optional[Dict[str, Optional[str]]] = None):
        from ..data import read_layout
        from ..data.h5format import open_h5

        self.env, self.path, self.goal_offset = env, Path(path), goal_offset
        with open_h5(self.path) as f:
            self.layout = read_layout(f, columns=columns)
        if self.layout.columns["state"] is None:
            raise ValueError(f"{self.path} has no simulator states (a 'state' column), which dataset goals restore the "
                             "env from; map one with columns.state=<name>, or evaluate with dataset=null (expert goals)")
        ids = np.arange(self.layout.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        self.episodes = ids[self.layout.lengths[ids] > goal_offset]
        if not len(self.episodes):
            raise ValueError(f"no episode of {self.path} (of the {len(ids)} eligible) is longer than goal_offset="
                             f"{goal_offset} steps")
        expected = np.asarray(env.unwrapped.get_state()).shape
        if (self.layout.state_dim,) != expected:
            raise ValueError(f"{self.path} stores {self.layout.state_dim}-wide simulator states but this env's state "
                             f"is {expected[0]}-wide: the file was recorded in another environment")

    def draw(self, seed: int) -> tuple[int, int]:
        """(episode, step t) for ``seed``."""
        rng = np.random.default_rng(seed)
        episode = int(self.episodes[rng.integers(len(self.episodes))])
        return episode, int(rng.integers(int(self.layout.lengths[episode]) - self.goal_offset))

    def __call__(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from ..data.h5format import open_h5
        from ..data.layout import read_rows

        episode, t = self.draw(seed)
        row = int(self.layout.starts[episode]) + t
        with open_h5(self.path) as f:
            start, goal = read_rows(f, self.layout, "state", row, row + self.goal_offset + 1, self.goal_offset)
        self.env.reset(seed=seed)
        self.env.unwrapped.set_state(start)
        return np.array(start, copy=True), np.array(goal, copy=True)


def render_state(env: Any, state: np.ndarray) -> np.ndarray:
    """The frame of ``state``; the env's current state is restored afterwards."""
    sim = env.unwrapped
    current = np.array(sim.get_state(), copy=True)
    sim.set_state(state)
    frame = np.array(env.render(), copy=True)
    sim.set_state(current)
    return frame


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_episode(
    env: Any,
    goals: Callable[[int], tuple[np.ndarray, np.ndarray]],
    planner: Any,
    model: LeWM,
    codec: ActionCodec,
    *,
    episode: int,
    seed: int,
    budget: int = 50,
    history_len: Optional[int] = None,
    record: bool = False,
) -> EpisodeResult:
    """One goal-conditioned MPC episode from ``goals(seed)`` (``ExpertGoals`` or ``DatasetGoals``) with
    ``planner.act``/``planner.reset`` (see module doc); the planner sees the last ``history_len`` frames (default: the
    model's window)."""
    device = next(model.parameters()).device
    start, goal_state = goals(seed)
    goal_frame = render_state(env, goal_state)
    goal = preprocess_frames(torch.from_numpy(goal_frame)).unsqueeze(0).to(device)  # (1,3,S,S)
    sim = env.unwrapped
    sim.set_goal_state(goal_state)  # Reacher judges it after each physics sub-step, as stable-worldmodel does
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    history = model.history_size if history_len is None else history_len

    frame = np.array(env.render(), copy=True)
    context = [preprocess_frames(torch.from_numpy(frame))]  # (3,S,S) every frameskip env steps
    executed: List[torch.Tensor] = []  # normalised action blocks between the context frames
    result = EpisodeResult(episode, seed, bool(sim.is_success(start, goal_state)), 0)
    if record:
        result.frames.append(frame)
        result.goal_frame = goal_frame
    planner.reset()
    while not result.success and result.steps < budget:
        obs = torch.stack(context[-history:]).unsqueeze(0).to(device)  # (1,h,3,S,S)
        h = obs.shape[1]
        hist = (torch.stack(executed[len(executed) - (h - 1):]) if h > 1 else torch.zeros(0, model.action_dim))
        hist = hist.unsqueeze(0).to(device)
        _sync(device)
        t0 = time.perf_counter()
        blocks = planner.act(obs, goal, hist)  # (1, receding_horizon, frameskip*A)
        _sync(device)
        result.plan_latencies_s.append(time.perf_counter() - t0)
        for block in blocks[0]:
            actions = np.clip(codec.to_env(block), low, high)
            for a in actions:
                env.step(a.astype(np.float32))
                result.steps += 1
                if record:
                    result.frames.append(np.array(env.render(), copy=True))
                if sim.is_success(sim.get_state(), goal_state):
                    result.success = True
                    break
                if result.steps >= budget:
                    break
            if result.success or result.steps >= budget:
                break
            context.append(preprocess_frames(torch.from_numpy(np.array(env.render(), copy=True))))
            executed.append(codec.to_model(actions))
            context, executed = context[-history:], executed[-history:]
    return result


def summarize(results: Sequence[EpisodeResult]) -> Dict[str, Any]:
    """Success rate and plan-latency statistics over episodes."""
    latencies = np.array([t for r in results for t in r.plan_latencies_s], dtype=np.float64)
    successes = [r.success for r in results]
    return {
        "episodes": len(results),
        "successes": int(sum(successes)),
        "already_at_goal": sum(r.success and r.steps == 0 for r in results),  # start within the success radius
        "success_rate": float(np.mean(successes)) if results else float("nan"),
        "plans": int(latencies.size),
        "plan_latency_mean_s": float(latencies.mean()) if latencies.size else float("nan"),
        "plan_latency_median_s": float(np.median(latencies)) if latencies.size else float("nan"),
        "plan_latency_first_s": float(latencies[0]) if latencies.size else float("nan"),  # includes warm-up
        "plan_latency_mean_after_first_s": float(latencies[1:].mean()) if latencies.size > 1 else float("nan"),
        "mean_steps_successful": float(np.mean([r.steps for r in results if r.success])) if any(successes) else None,
    }
