"""Goal-conditioned MPC evaluation of a trained LeWM in its environment (SPEC §4).

Per episode (seeded): reset the env, run the expert policy ``goal_offset`` env steps from the start state (a held-out
trajectory) and take the state reached as the goal; restore the start state, render the goal frame from the goal state.
Then receding-horizon MPC: each replan encodes the last ``history_size`` frames (one every ``frameskip`` env steps) with
the action blocks between them, plans with the CEM planner, and executes the first ``receding_horizon`` blocks
(``frameskip`` env actions each, un-normalised with the training data's statistics). An episode succeeds when
``env.is_success(state, goal_state)`` holds after some env step within ``budget`` steps.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

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


class ActionCodec:
    """Maps the model's normalised action blocks (frameskip*A,) to env actions (frameskip, A) and back.

    ``mean``/``std`` are the training data's action statistics, per env action dimension (A,) or per block entry
    (frameskip*A,); a block is ``frameskip`` consecutive env actions, flattened row-major.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], frameskip: int, action_dim: int):
        width = frameskip * action_dim
        mean_a, std_a = np.asarray(mean, dtype=np.float64).ravel(), np.asarray(std, dtype=np.float64).ravel()
        if mean_a.shape != std_a.shape or mean_a.size not in (action_dim, width):
            raise ValueError(
                f"action statistics must have {action_dim} (per env action) or {width} (per block) entries, got mean "
                f"{mean_a.size} and std {std_a.size}"
            )
        if not np.all(std_a > 0):
            raise ValueError(f"action std must be > 0, got {std_a.tolist()}")
        reps = frameskip if mean_a.size == action_dim else 1
        self.mean = np.tile(mean_a, reps).reshape(frameskip, action_dim)
        self.std = np.tile(std_a, reps).reshape(frameskip, action_dim)
        self.frameskip, self.action_dim = frameskip, action_dim

    def to_env(self, block: torch.Tensor | np.ndarray) -> np.ndarray:
        """(frameskip*A,) normalised -> (frameskip, A) env actions."""
        block = np.asarray(torch.as_tensor(block).detach().float().cpu(), dtype=np.float64)
        return block.reshape(self.frameskip, self.action_dim) * self.std + self.mean

    def to_model(self, actions: np.ndarray) -> torch.Tensor:
        """(frameskip, A) env actions -> (frameskip*A,) normalised float32."""
        return torch.from_numpy(((np.asarray(actions, dtype=np.float64) - self.mean) / self.std).reshape(-1)).float()


def held_out_goal(env: Any, policy: Any, seed: int, goal_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Reset with ``seed`` and roll the expert ``goal_offset`` env steps. -> (start_state, goal_state); the env is left
    in the start state."""
    obs, _ = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset(seed=seed)
    sim = env.unwrapped
    start = np.array(sim.get_state(), copy=True)
    for _ in range(goal_offset):
        obs, *_ = env.step(policy.act(obs))
    goal = np.array(sim.get_state(), copy=True)
    sim.set_state(start)
    return start, goal


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
    policy: Any,
    planner: Any,
    model: LeWM,
    codec: ActionCodec,
    *,
    episode: int,
    seed: int,
    goal_offset: int = 25,
    budget: int = 50,
    record: bool = False,
) -> EpisodeResult:
    """One goal-conditioned MPC episode with ``planner.act``/``planner.reset`` (see module doc)."""
    device = next(model.parameters()).device
    start, goal_state = held_out_goal(env, policy, seed, goal_offset)
    goal_frame = render_state(env, goal_state)
    goal = preprocess_frames(torch.from_numpy(goal_frame)).unsqueeze(0).to(device)  # (1,3,S,S)
    sim = env.unwrapped
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    history = model.history_size

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
