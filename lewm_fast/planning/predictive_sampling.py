"""Predictive sampling (Howell et al. 2022; stable-worldmodel's ``PredictiveSamplingSolver``) on the rollout engine."""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_positive_int
from ..reference.lewm import LeWM
from .base import LoopBuffers, PlannerBase
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike
from .rollout import RolloutEngine


class PredictiveSamplingPlanner(PlannerBase):
    """One round of ``num_samples`` candidates = nominal + ``noise_scale`` x N(0, 1) per env (candidate 0 = the
    nominal: the warm start, so a plan is never worse than the previous one shifted), and the plan is the candidate of
    lowest cost. ``act`` warm-starts the nominal from the previous plan (MPC), which is where the method gets its
    iterations. Diagnostics: one entry, the chosen candidate's cost (B, 1), the plan and the std ``noise_scale``.
    On CPU the draw is ``torch.randn(B, N, T, A, generator=g)`` as stable-worldmodel's; on CUDA one graph per plan."""

    def __init__(
        self,
        model: LeWM,
        num_samples: int = 300,
        horizon: int = 5,
        receding_horizon: int = 5,
        noise_scale: float = 1.0,
        backend: str = "auto",
        dtype: Optional[torch.dtype] = None,
        seed: Optional[int] = None,
        engine: Optional[RolloutEngine] = None,
        cuda_graph: bool = True,
        precision: str = "ieee",
        action_bounds: Optional[BoundsLike] = None,
        bounds_mode: str = "clip",
        bounds_weight: float = DEFAULT_PENALTY_WEIGHT,
    ):
        super().__init__(
            model, num_samples=num_samples, topk=1, n_steps=1, horizon=horizon, receding_horizon=receding_horizon,
            var_scale=noise_scale, backend=backend, dtype=dtype, seed=seed, engine=engine, cuda_graph=cuda_graph,
            precision=precision, action_bounds=action_bounds, bounds_mode=bounds_mode, bounds_weight=bounds_weight,
        )
        self.noise_scale = float(noise_scale)

    def _check_settings(self, num_samples: int, topk: int, n_steps: int, horizon: int, receding_horizon: int,
                        var_scale: float) -> None:
        check_positive_int(num_samples, "num_samples")
        check_positive_int(horizon, "horizon")
        check_positive_int(receding_horizon, "receding_horizon")
        if receding_horizon > horizon:
            raise ValueError(f"receding_horizon ({receding_horizon}) must be <= horizon ({horizon})")
        if not var_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {var_scale}")

    def _loop(self, buf: LoopBuffers) -> None:
        cand = buf.cand[0]
        self.sample_(cand, buf.init_mean, buf.init_std, 0)
        costs = self.loop_costs(buf, cand)
        clean = torch.where(torch.isnan(costs), float("inf"), costs)
        torch.topk(clean, 1, dim=1, largest=False, out=(buf.elite_costs[0], buf.elite_idx))
        rows = torch.arange(cand.shape[0], device=cand.device)
        buf.means[0].copy_(cand[rows, buf.elite_idx[:, 0]])
        buf.stds[0].copy_(buf.init_std)
        buf.bad.copy_((~torch.isfinite(buf.elite_costs[0][:, 0])).int())
        self.advance_noise_()
