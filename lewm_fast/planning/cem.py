"""Fast CEM planner: drop-in for the reference ``CEMSolver`` on the fused rollout engine (SPEC §3)."""

from __future__ import annotations

from ..ops.elite_refit import EliteRefit, refit_and_sample_
from .base import LoopBuffers, PlannerBase


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
    """

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
        self.advance_noise_()
