"""MPPI planner (model predictive path integral control) on the fused rollout engine."""

from __future__ import annotations

from typing import Optional

import torch

from ..reference.lewm import LeWM
from .base import LoopBuffers, PlannerBase
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike
from .rollout import RolloutEngine


class MPPIPlanner(PlannerBase):
    """Information-theoretic MPPI over action sequences, B environments at once.

    Per iteration: ``num_samples`` candidates ~ N(mean, var_scale²) (candidate 0 = mean), costs from the rollout
    engine, weights ``w ∝ exp(-(cost - min cost) / temperature)`` (NaN/inf costs get weight 0), mean <- the weighted
    average of the candidates. The sampling std stays ``var_scale``. Diagnostics report the ``topk`` lowest costs of
    each iteration as ``elite_costs`` and the sampling std as ``std``. An environment whose costs are all non-finite is
    reported (ValueError) after the plan.

    ``elites_only=True`` weighs only the ``topk`` lowest-cost candidates (stable-worldmodel's ``MPPISolver`` when
    ``topk < num_samples``); the default weighs all of them.
    """

    def __init__(
        self,
        model: LeWM,
        num_samples: int = 300,
        topk: int = 30,
        n_steps: int = 30,
        horizon: int = 5,
        receding_horizon: int = 5,
        var_scale: float = 1.0,
        temperature: float = 1.0,
        elites_only: bool = False,
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
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(
            model, num_samples=num_samples, topk=topk, n_steps=n_steps, horizon=horizon,
            receding_horizon=receding_horizon, var_scale=var_scale, backend=backend, dtype=dtype, seed=seed,
            engine=engine, cuda_graph=cuda_graph, precision=precision, action_bounds=action_bounds,
            bounds_mode=bounds_mode, bounds_weight=bounds_weight,
        )
        self.temperature = float(temperature)
        self.elites_only = bool(elites_only)

    def _loop(self, buf: LoopBuffers) -> None:
        buf.bad.zero_()
        mean, std, cand = buf.init_mean, buf.init_std, buf.cand[0]
        flat = cand.flatten(2)  # (B, N, T*A)
        for i in range(self.n_steps):
            self.sample_(cand, mean, std, i)
            costs = self.loop_costs(buf, cand)
            clean = torch.where(torch.isnan(costs), float("inf"), costs)
            torch.topk(clean, self.topk, dim=1, largest=False, out=(buf.elite_costs[i], buf.elite_idx))
            weighed, pool = clean, flat
            if self.elites_only:
                weighed = buf.elite_costs[i]
                pool = torch.gather(flat, 1, buf.elite_idx.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))
            finite = torch.isfinite(weighed)
            buf.bad.bitwise_or_((~finite.any(1)).int())
            best = weighed.amin(1, keepdim=True)
            logits = torch.where(finite, (best - weighed) / self.temperature, float("-inf"))
            weights = torch.softmax(logits, dim=1).nan_to_num_(0.0)  # an all-diverged env: zero mean, flagged in bad
            torch.bmm(weights.unsqueeze(1), pool, out=buf.means[i].view(mean.shape[0], 1, -1))
            self.clip_(buf.means[i])
            buf.stds[i].copy_(std)
            mean = buf.means[i]
        self.advance_noise_()
