"""Planning viewer: ``PlanRecorder`` captures what a CEM planner considered at every replan of an MPC episode, and
``write_viewer`` turns that record into one self-contained HTML file (data inlined, plain JS + canvas).

The recorder stands in for the planner: ``act`` calls the planner's own ``act`` (so the episode runs exactly as without
it), then replays the same plan on a copy of the planner taken just before (same noise stream, same warm start,
sharing the model) with every iteration's candidates and costs captured; ``reproduced`` says whether the copy
returned the same blocks. Env steps come in through ``step(frame, state, proprio)`` (or ``watch(env)``, a wrapper
that reports every ``env.step``).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ..data.latents import encode_frames
from ..reference.vit import IMAGENET_MEAN, IMAGENET_STD
from .projection import LatentProjection
from .quantities import QUANTITIES, read_quantities
from .viewer_page import PAGE

Y_DOWN = ("two_room", "pusht")  # envs whose plane coordinates grow downwards, as in their frames


@dataclass
class _Replan:
    step: int
    reproduced: bool
    iterations: list[dict[str, np.ndarray]]  # "latents" (S, T+1, D), "costs" (S,), "elite" (S,) bool
    plan: np.ndarray  # (T+1, D) rollout of the final elite mean


@dataclass
class _Log:
    frames: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray | None] = field(default_factory=list)
    proprio: list[np.ndarray | None] = field(default_factory=list)
    replans: list[_Replan] = field(default_factory=list)
    goal: torch.Tensor | None = None  # (3, h, w) model input, or (D,) latent


class PlanRecorder:
    """Wraps a sampling planner (``CEMPlanner``; env 0 of a batch is recorded): use it in place of the planner.

    ``projection``: a ``LatentProjection`` (e.g. ``LatentProjection.from_probe("probe.json")``) giving the plane the
    candidates are drawn in; None: latent PCA. ``env_name``: reads the executed path from simulator states (the env's
    plane quantities) when the projection is a probe onto them. ``max_candidates``: candidates kept per iteration
    (all elites up to half of it, the rest drawn at random)."""

    def __init__(self, planner: Any, projection: LatentProjection | None = None, env_name: str | None = None,
                 max_candidates: int = 32, seed: int = 0):
        self.planner, self.projection, self.env_name = planner, projection, env_name
        if projection is not None:
            projection.check(planner.model.latent_dim)
        self.max_candidates = max_candidates
        self.rng = np.random.default_rng(seed)
        self.log = _Log()
        self._watched: gym.Env | None = None

    def __getattr__(self, name: str) -> Any:  # receding_horizon, horizon, topk, ... of the planner
        if name == "planner":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.planner, name)

    # ------------------------------------------------------------------ episode hooks
    def reset(self, envs: Any = None) -> None:
        """Forget the warm start (the planner's ``reset``) and start a new episode record; a watched env reports its
        current frame as step 0."""
        self.planner.reset(envs)
        self.log = _Log()
        if self._watched is not None:
            base = self._watched.unwrapped
            self.step(self._watched.render(), base.get_state(), base.get_proprio())

    def step(self, frame: np.ndarray, state: np.ndarray | None = None, proprio: np.ndarray | None = None) -> None:
        """One env step's frame uint8 (H, W, 3), simulator state and proprioception (the first call: the start)."""
        self.log.frames.append(np.array(frame, dtype=np.uint8, copy=True))
        self.log.states.append(None if state is None else np.asarray(state, np.float64).copy())
        self.log.proprio.append(None if proprio is None else np.asarray(proprio, np.float64).copy())

    def watch(self, env: gym.Env) -> gym.Env:
        """``env`` wrapped so that every ``step`` (and this recorder's ``reset``) reports its observation here."""
        recorder = self

        class _Watched(gym.Wrapper):
            def step(self, action):
                out = self.env.step(action)
                obs = out[0]
                recorder.step(obs["pixels"], obs.get("state"), obs.get("proprio"))
                return out

        self._watched = _Watched(env)
        return self._watched

    @torch.no_grad()
    def act(self, obs: torch.Tensor, goal: torch.Tensor, action_history: torch.Tensor | None = None,
            latent: bool = False) -> torch.Tensor:
        """The planner's ``act`` (its result is returned unchanged), then the recorded replay of that plan."""
        shadow = copy.deepcopy(self.planner, {id(self.planner.model): self.planner.model,
                                              id(self.planner.engine): self.planner.engine})
        blocks = self.planner.act(obs, goal, action_history, latent)
        self.log.goal = goal[0].detach().cpu().clone()
        self.log.replans.append(self._replay(shadow, obs, goal, action_history, latent, blocks))
        return blocks

    def _replay(self, shadow: Any, obs, goal, action_history, latent: bool, blocks: torch.Tensor) -> _Replan:
        shadow.cuda_graph = False  # eager, so that every iteration passes through loop_costs
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        loop_costs = shadow.loop_costs

        def recording(buf, cand):
            costs = loop_costs(buf, cand)
            captured.append((cand[0].clone(), costs[0].clone()))
            return costs

        shadow.loop_costs = recording
        replayed = shadow.act(obs, goal, action_history, latent)
        emb_ctx, _ = shadow.prepare(obs[:1], goal[:1], latent)
        hist, _ = shadow._check_actions(1, emb_ctx.shape[1], None if action_history is None else action_history[:1], None)
        iterations = []
        for cand, costs in captured:
            order = torch.sort(torch.nan_to_num(costs, nan=float("inf")), stable=True).indices.cpu()  # as the refit
            keep = self._subsample(order.numpy())
            iterations.append({"latents": self._rollout(shadow.model, emb_ctx, hist, cand[keep]),
                               "costs": costs[keep].float().cpu().numpy(),
                               "elite": np.isin(keep, order[: shadow.topk].numpy())})
        final_elites = cand[order[: shadow.topk]]  # of the last iteration: their mean is CEM's plan
        plan = self._rollout(shadow.model, emb_ctx, hist, final_elites.mean(0, keepdim=True))[0]
        return _Replan(len(self.log.frames) - 1, bool(torch.equal(replayed, blocks)), iterations, plan)

    def _subsample(self, order: np.ndarray) -> np.ndarray:
        """Candidate indices to keep: the best up to half of ``max_candidates`` and random others."""
        n_best = min(self.planner.topk, self.max_candidates // 2)
        rest = order[n_best:]
        picked = self.rng.choice(rest, size=min(len(rest), self.max_candidates - n_best), replace=False)
        return np.concatenate([order[:n_best], np.sort(picked)])

    @staticmethod
    def _rollout(model, emb_ctx: torch.Tensor, hist: torch.Tensor, cand: torch.Tensor) -> np.ndarray:
        """Latents (S, T+1, D) of the current frame and the T predicted after candidates (S, T, A)."""
        s, h = cand.shape[0], emb_ctx.shape[1]
        out = model.rollout(emb_ctx[:1, None].expand(1, s, -1, -1), hist[:1, None].expand(1, s, -1, -1).to(cand),
                            cand[None].to(emb_ctx.dtype))
        return out[0, :, h - 1:].float().cpu().numpy()

    # ------------------------------------------------------------------ the record
    def record(self, goal_state: np.ndarray | None = None) -> dict[str, Any]:
        """The episode as plain data for ``write_viewer`` (coordinates rounded, frames as image data URLs)."""
        log = self.log
        if not log.frames or not log.replans:
            raise ValueError("nothing recorded: call reset(), step(frame, ...) for the start and every env step, and "
                             "act() at every replan (or pass the env through watch())")
        model = self.planner.model
        latents = encode_frames(model, np.stack(log.frames))
        goal_latent = self._goal_latent(model)
        latent_map = LatentProjection.pca(np.concatenate([latents, goal_latent[None]]))
        plane = self.projection or latent_map
        xy = self._executed(plane, latents)
        replan_at = np.searchsorted([r.step for r in log.replans], np.arange(len(log.frames)), side="right") - 1
        return {
            "env": self.env_name, "axes": list(plane.axes), "projection": plane.kind, "topk": self.planner.topk,
            "y_down": self.env_name in Y_DOWN and plane.kind == "probe",
            "goal_frame": None if log.goal is None or log.goal.dim() != 3 else _data_url(_to_uint8(log.goal)),
            "goal_xy": _r(self._goal_xy(plane, goal_latent, goal_state)), "goal_map": _r(latent_map(goal_latent)),
            "steps": [{"frame": _data_url(f), "xy": _r(p), "map": _r(m), "replan": int(j)}
                      for f, p, m, j in zip(log.frames, xy, latent_map(latents), replan_at)],
            "replans": [{
                "step": r.step, "reproduced": r.reproduced, "plan": _r(plane(r.plan)), "plan_map": _r(latent_map(r.plan)),
                "iterations": [{"paths": _r(plane(it["latents"])), "costs": _r(it["costs"], 5),
                                "elite": it["elite"].astype(int).tolist()} for it in r.iterations],
            } for r in log.replans],
        }

    def write(self, path: str | os.PathLike, goal_state: np.ndarray | None = None) -> Path:
        """``write_viewer(path, self.record(goal_state))``: the episode's HTML page; -> its path."""
        return write_viewer(path, self.record(goal_state))

    def _goal_latent(self, model) -> np.ndarray:
        goal = self.log.goal
        if goal.dim() == 1:
            return goal.float().numpy()
        with torch.no_grad():
            return model.encode(goal[None, None].to(next(model.parameters()).device))[0, 0].float().cpu().numpy()

    def _state_plane(self, plane: LatentProjection) -> bool:
        """Whether simulator states give the plane's coordinates directly."""
        return plane.kind == "probe" and set(plane.axes) <= set(QUANTITIES.get(self.env_name, {}))

    def _executed(self, plane: LatentProjection, latents: np.ndarray) -> np.ndarray:
        """Executed path (steps, 2): the env's own coordinates from the states when they give them, else projected."""
        log = self.log
        if self._state_plane(plane) and all(s is not None for s in log.states):
            proprio = np.stack([p if p is not None else np.zeros(0) for p in log.proprio])
            return read_quantities(self.env_name, plane.axes, np.stack(log.states), proprio)
        return plane(latents)

    def _goal_xy(self, plane: LatentProjection, goal_latent: np.ndarray, goal_state: np.ndarray | None) -> np.ndarray:
        if goal_state is not None and self._state_plane(plane):
            proprio = self.log.proprio[-1] if self.log.proprio[-1] is not None else np.zeros(0)
            return read_quantities(self.env_name, plane.axes, np.asarray(goal_state)[None], proprio[None])[0]
        return plane(goal_latent)


def _r(x: np.ndarray, digits: int = 4) -> Any:
    """Rounded nested lists (significant ``digits``) for a compact JSON."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(np.asarray(x, np.float64)).tolist()


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3, h, w) -> uint8 (h, w, 3)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def _data_url(frame: np.ndarray) -> str:
    """A frame as a PNG (up to 96 px) or JPEG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    small = frame.shape[0] <= 96
    Image.fromarray(frame).save(buf, "PNG" if small else "JPEG", **({"optimize": True} if small else {"quality": 80}))
    return f"data:image/{'png' if small else 'jpeg'};base64,{base64.b64encode(buf.getvalue()).decode()}"


def write_viewer(path: str | os.PathLike, record: dict[str, Any], title: str = "LeWM planning viewer") -> Path:
    """Write the self-contained HTML viewer of a ``PlanRecorder.record()``; -> its path."""
    for key in ("steps", "replans", "axes"):
        if key not in record:
            raise ValueError(f"not a PlanRecorder record: it has no {key!r}")
    data = json.dumps(record, separators=(",", ":")).replace("</", "<\\/")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.replace("__TITLE__", title).replace("__DATA__", data), encoding="utf-8")
    return path
