"""Action bounds for the sampling planners: keep candidates inside the actions the model was trained on.

A world model trained on an env whose actions live in a box has never seen actions outside it; a sampling planner
left free finds out-of-range action sequences whose predicted goal cost is low but wrong (the model extrapolates).
``ActionBounds`` holds per block entry bounds (A,) in the model's normalised units (the env box mapped by the run's
action statistics: ``normalized_box``) and one of two modes:

- ``"clip"``: every sampled candidate is clamped into [low, high] (so elites, the refitted mean and the returned plan
  stay inside too);
- ``"penalty"``: candidates are sampled freely and each pays ``weight * sum_{t,j} excess_{t,j}^2`` on top of its goal
  cost, ``excess = max(0, a - high) + max(0, low - a)`` per horizon step t and block entry j.

Both are plain torch ops on device tensors (no host sync), so they run inside a captured CUDA graph.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch

BOUND_MODES = ("clip", "penalty")
DEFAULT_ACTION_BOUNDS = "none"  # lewm-eval's and the ONNX export's default (README, "Action bounds")
DEFAULT_PENALTY_WEIGHT = 10.0

BoundsLike = Tuple[Union[Sequence[float], np.ndarray, torch.Tensor], Union[Sequence[float], np.ndarray, torch.Tensor]]


def normalized_box(codec: Any, low: Sequence[float], high: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """The env's action box low/high (A_env,) in env units -> (low, high) per block entry (frameskip*A_env,) in the
    model's normalised units, with ``codec`` the run's ``ActionCodec`` (normalised = (action - mean) / std, std > 0,
    so the order of low and high is kept)."""
    lo = np.tile(np.asarray(low, dtype=np.float64).ravel(), codec.frameskip)
    hi = np.tile(np.asarray(high, dtype=np.float64).ravel(), codec.frameskip)
    width = codec.frameskip * codec.action_dim
    if lo.size != width or hi.size != width:
        raise ValueError(f"the action box must have {codec.action_dim} entries per side, got {np.size(low)} and "
                         f"{np.size(high)}")
    norm = lambda x: codec.normalize(torch.from_numpy(x)).numpy()  # noqa: E731
    return norm(lo), norm(hi)


class ActionBounds:
    """Bounds ``low``/``high`` (A,) float32 on ``device`` for action blocks of width A, with ``mode`` ("clip" or
    "penalty") and the penalty ``weight``. ValueError (one line) for bounds of the wrong length, NaN, low > high, an
    unknown mode or a negative weight."""

    def __init__(self, bounds: BoundsLike, width: int, device: torch.device, mode: str = "clip",
                 weight: float = DEFAULT_PENALTY_WEIGHT):
        if mode not in BOUND_MODES:
            raise ValueError(f"bounds_mode must be one of {BOUND_MODES}, got {mode!r}")
        if not float(weight) >= 0:
            raise ValueError(f"bounds_weight must be >= 0, got {weight}")
        if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
            raise ValueError(f"action_bounds must be a pair (low, high) of {width} values each, got {bounds!r}")
        try:
            low, high = (torch.as_tensor(b, dtype=torch.float64, device="cpu").reshape(-1) for b in bounds)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"action_bounds must be a pair (low, high) of numbers: {exc}") from None
        if low.numel() != width or high.numel() != width:
            raise ValueError(f"action_bounds low and high must have {width} values each (one per action block entry), "
                             f"got {low.numel()} and {high.numel()}")
        if bool(low.isnan().any() | high.isnan().any()):
            raise ValueError("action_bounds must not contain NaN")
        if bool((low > high).any()):
            bad = (low > high).nonzero().flatten().tolist()
            raise ValueError(f"action_bounds low must be <= high, not so at entries {bad}")
        self.low, self.high = low.float().to(device), high.float().to(device)
        self.mode, self.weight = mode, float(weight)

    def clip_(self, x: torch.Tensor) -> torch.Tensor:
        """In clip mode, clamp ``x`` (..., A) into [low, high] in place; unchanged in penalty mode."""
        if self.mode == "clip":
            x.clamp_(min=self.low, max=self.high)
        return x

    def penalty(self, candidates: torch.Tensor) -> torch.Tensor:
        """candidates (B, N, T, A) -> (B, N) float32 ``weight * sum over (T, A) of excess^2`` (0 inside the box)."""
        c = candidates.float()
        excess = (c - self.high).clamp_min(0.0) + (self.low - c).clamp_min(0.0)
        return excess.square().sum((-2, -1)).mul_(self.weight)

    def add_penalty(self, costs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Costs (B, N) of candidates (B, N, T, A) plus the penalty in penalty mode; ``costs`` as is in clip mode."""
        if self.mode != "penalty":
            return costs
        return costs + self.penalty(candidates).to(costs.dtype)

    def describe(self) -> dict:
        """JSON-ready {"low", "high", "mode"[, "weight"]}."""
        out = {"low": self.low.tolist(), "high": self.high.tolist(), "mode": self.mode}
        if self.mode == "penalty":
            out["weight"] = self.weight
        return out


def make_bounds(bounds: Optional[BoundsLike], width: int, device: torch.device, mode: str = "clip",
                weight: float = DEFAULT_PENALTY_WEIGHT) -> Optional[ActionBounds]:
    """``ActionBounds`` or None for ``bounds=None`` (the mode and weight are checked either way)."""
    if bounds is None:
        if mode not in BOUND_MODES:
            raise ValueError(f"bounds_mode must be one of {BOUND_MODES}, got {mode!r}")
        return None
    return ActionBounds(bounds, width, device, mode, weight)
