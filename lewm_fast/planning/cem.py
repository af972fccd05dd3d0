"""Fast CEM planner: drop-in for the reference ``CEMSolver`` on the fused rollout engine (SPEC §3)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..ops.elite_refit import EliteRefit, refit_and_sample_
from ..reference.cem import PlanDiagnostics, check_cem_settings
from ..reference.lewm import LeWM
from .base import LoopBuffers, PlannerBase

PlanInit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CEMPlanner(PlannerBase):
    """Cross-entropy method over action sequences, B environments at once.

    Per iteration: ``num_samples`` candidates ~ N(mean, std) with candidate 0 = mean, costs from the rollout engine,
    mean/std <- the ``topk`` lowest-cost elites (unbiased std). Same arguments and ``plan`` signature as the reference
    ``CEMSolver`` plus ``backend``, ``dtype`` (rollout dtype; default ``default_planning_dtype``: bfloat16 on CUDA,
    float32 elsewhere; torch.float32 with precision "ieee" is the exact parity mode), ``precision``
    (how float32 GEMMs multiply on the Triton backend: "ieee" exact, "tf32", "tf32x3"; see ``RolloutEngine``),
    ``engine`` (a shared ``RolloutEngine``) and ``cuda_graph``.

    On CPU (``backend`` "cpu"/"reference") seeded plans consume ``torch.randn(B, N, T, A, generator=g)`` per iteration
    like the reference, so they match it to floating-point tolerance. With ``backend="triton"`` each iteration after the
    first is one fused elite-refit + Philox-sampling kernel (``ops.elite_refit.refit_and_sample_``) and, on CUDA, the
    whole ``n_steps`` loop is one replayed CUDA graph; a divergence (fewer than ``topk`` finite costs) is raised after
    the plan.

    ``init``: ``init(emb_ctx (B,H,D), action_history (B,H-1,A), goal_emb (B,D)) -> (B, horizon, A)``, e.g.
    ``planning.idm.IDMInit`` (the GC-IDM's rollout in latent space): every plan starts from its mean instead of the
    given / warm-started one; with it, ``n_steps=0`` is allowed and returns that mean unchanged.
    """

    def __init__(self, model: LeWM, *args: Any, init: Optional[PlanInit] = None, **kwargs: Any):
        self.init = init
        super().__init__(model, *args, **kwargs)

    def _check_settings(self, num_samples: int, topk: int, n_steps: int, horizon: int, receding_horizon: int,
                        var_scale: float) -> None:
        if n_steps == 0 and self.init is None:
            raise ValueError("n_steps=0 (no CEM iterations) needs init=...: the plan is then init's")
        check_cem_settings(num_samples, topk, max(n_steps, 1), horizon, receding_horizon, var_scale)

    def _run(self, emb_ctx: torch.Tensor, hist: torch.Tensor, goal_emb: torch.Tensor, mean: torch.Tensor,
             diagnostics: bool, carry: Optional[Dict[str, torch.Tensor]],
             ) -> Tuple[torch.Tensor, Optional[PlanDiagnostics], Dict[str, torch.Tensor]]:
        if self.init is not None:
            seeded = self.init(emb_ctx, hist, goal_emb)
            if tuple(seeded.shape) != tuple(mean.shape):
                raise ValueError(f"init returned shape {tuple(seeded.shape)}, expected {tuple(mean.shape)}")
            mean = seeded.to(mean)
        if self.n_steps == 0:
            return self.clip_(mean.clone()), PlanDiagnostics([], [], []) if diagnostics else None, {}
        return super()._run(emb_ctx, hist, goal_emb, mean, diagnostics, carry)

    def _loop(self, buf: LoopBuffers) -> None:
        if self.which == "triton":
            self._loop_fused(buf)
            return
        mean, std, cand = buf.init_mean, buf.init_std, buf.cand[0]
        for i in range(self.n_steps):
            self.sample_(cand, mean, std, i)
            costs = self.loop_costs(buf, cand)
            self.refit_(buf, cand, costs, buf.means[i], buf.stds[i], i)
            mean, std = buf.means[i], buf.stds[i]

    def _loop_fused(self, buf: LoopBuffers) -> None:
        """Triton: sample once, then per iteration costs + one refit-and-sample launch (no host sync)."""
        buf.bad.zero_()
        self.sample_(buf.cand[0], buf.init_mean, buf.init_std, 0)
        for i in range(self.n_steps):
            cand = buf.cand[i % 2]
            costs = self.loop_costs(buf, cand)
            if i + 1 == self.n_steps:
                self.refit_(buf, cand, costs, buf.means[i], buf.stds[i], i)
                break
            out = EliteRefit(buf.means[i], buf.stds[i], buf.elite_idx, buf.elite_costs[i])
            refit_and_sample_(cand, costs, self.topk, out, buf.bad, buf.cand[(i + 1) % 2], self.noise.seed_buf, i + 1)
            self.clip_(buf.cand[(i + 1) % 2])
            self.clip_(buf.means[i])
        self.advance_noise_()
