"""stable-worldmodel's solver callbacks (``solver/callbacks``): the protocol the adapter solvers drive, and its
recorders.

A solver calls ``reset()`` at the start of ``solve``, ``start_batch()`` per chunk of envs, ``cb(**state)`` once per
iteration (CEM / iCEM / categorical CEM: ``step, candidates, costs, topk_vals, topk_inds, topk_candidates, mean, var,
prev_mean, prev_var`` — categorical CEM passes ``probs, prev_probs`` instead of mean/var, iCEM adds ``action_low,
action_high``; gradient descent: ``step, params, cost, costs`` with ``params.grad`` still set) and ``end_solve()``, then
returns ``{cb.output_key: cb.history}`` as ``out["callbacks"]``; ``history`` is a list per chunk of a value per step.
stable-worldmodel's own callback objects work the same way with the adapter solvers.
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional

import torch

Reduction = Literal["mean", "sum", "none"]


class Callback:
    """Base class: subclasses implement ``compute(**state)`` -> a value per step (None: skip the step), reduced over
    envs with ``self._reduce`` ("mean", "sum", or "none": a list per env)."""

    name: Optional[str] = None

    def __init__(self, reduction: Reduction = "mean") -> None:
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum', or 'none', got {reduction!r}")
        self.reduction = reduction
        self.history: List[List[Any]] = []
        self._current: List[Any] = []

    def _reduce(self, x: torch.Tensor) -> Any:
        x = x.detach()
        if self.reduction == "mean":
            return x.mean().item()
        if self.reduction == "sum":
            return x.sum().item()
        return x.cpu().tolist()

    def reset(self) -> None:
        self.history = []
        self._current = []

    def start_batch(self) -> None:
        if self._current:
            self.history.append(self._current)
        self._current = []

    def end_solve(self) -> None:
        if self._current:
            self.history.append(self._current)
            self._current = []

    def __call__(self, **state: Any) -> None:
        value = self.compute(**state)
        if value is not None:
            self._current.append(value)

    def compute(self, **state: Any) -> Any:
        raise NotImplementedError

    @property
    def output_key(self) -> str:
        return self.name or type(self).__name__


class BestCostRecorder(Callback):
    """Per-step minimum cost over the samples (per env)."""

    def compute(self, **state: Any) -> Any:
        return self._reduce(state["costs"].min(dim=1).values)


class MeanCostRecorder(Callback):
    """Per-step mean cost over the samples (per env)."""

    def compute(self, **state: Any) -> Any:
        return self._reduce(state["costs"].mean(dim=1))


class GradNormRecorder(Callback):
    """Per-step L2 norm of the action gradient (per env, mean over samples); ``per_step=True``: one per horizon step."""

    def __init__(self, reduction: Reduction = "mean", per_step: bool = False) -> None:
        super().__init__(reduction=reduction)
        self.per_step = per_step

    def compute(self, **state: Any) -> Any:
        params: torch.Tensor = state["params"]
        g = params.grad
        if self.per_step:
            if g is None:
                return [0.0] * params.shape[2]
            per_env_per_step = g.detach().norm(dim=-1).mean(dim=1)  # (B, N, H, D) -> (B, H)
            return [self._reduce(per_env_per_step[..., h]) for h in range(params.shape[2])]
        if g is None:
            return 0.0
        return self._reduce(g.detach().flatten(2).norm(dim=-1).mean(dim=-1))


class ActionNormRecorder(Callback):
    """Per-step L2 norm of the actions (per env, mean over samples)."""

    def compute(self, **state: Any) -> Any:
        return self._reduce(state["params"].detach().flatten(2).norm(dim=-1).mean(dim=-1))


class EliteCostRecorder(Callback):
    """Per-step elite cost statistics {mean, min, max} (per env)."""

    def compute(self, **state: Any) -> Any:
        v = state["topk_vals"].detach()
        return {"mean": self._reduce(v.mean(dim=1)), "min": self._reduce(v.min(dim=1).values),
                "max": self._reduce(v.max(dim=1).values)}


class VarNormRecorder(Callback):
    """Per-step mean of the sampling std (per env)."""

    def compute(self, **state: Any) -> Any:
        return self._reduce(state["var"].detach().flatten(1).mean(dim=-1))


class MeanShiftRecorder(Callback):
    """Per-step L2 distance between consecutive means (per env)."""

    def compute(self, **state: Any) -> Any:
        prev = state.get("prev_mean")
        if prev is None:
            return None
        return self._reduce((state["mean"] - prev).detach().flatten(1).norm(dim=-1))


class EliteSpreadRecorder(Callback):
    """Per-step std within the elites (per env)."""

    def compute(self, **state: Any) -> Any:
        return self._reduce(state["topk_candidates"].detach().std(dim=1).flatten(1).mean(dim=-1))


__all__ = ["ActionNormRecorder", "BestCostRecorder", "Callback", "EliteCostRecorder", "EliteSpreadRecorder",
           "GradNormRecorder", "MeanCostRecorder", "MeanShiftRecorder", "VarNormRecorder"]
