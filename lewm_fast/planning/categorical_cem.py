"""Categorical CEM for discrete actions (stable-worldmodel's ``CategoricalCEMSolver``): per (step, block position) a
categorical distribution over n categories, candidates by Gumbel-max, fed to the model as one-hot blocks.
``CategoricalCEMPlanner`` plans over the discrete set of a continuous-action env (``discrete.ActionGrid``)."""

from __future__ import annotations

from typing import Optional

import torch

from ..reference.lewm import LeWM
from .base import LoopBuffers, PhiloxNoise, PlannerBase
from .bounds import BoundsLike
from .discrete import ActionGrid
from .rollout import RolloutEngine

_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1: where the normal CDF of a Philox draw rounds to 1


def gumbel_argmax(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """probs (B, H, P, n), uniforms (B, S, H, P, n) in [0, 1) -> (B, S, H, P) int64 Gumbel-max draws (the uniforms
    clamped to >= 1e-10 like the log-probs, as stable-worldmodel computes them)."""
    log_probs = probs.clamp_min(1e-10).log().unsqueeze(1)
    u = uniform.clamp_min(1e-10)
    return (log_probs - (-u.log()).log()).argmax(dim=-1)


def gumbel_max_indices(probs: torch.Tensor, num_samples: int,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """probs (B, H, P, n) -> ``num_samples`` categorical draws (B, num_samples, H, P) int64 by Gumbel-max: one
    ``torch.rand`` of shape (B, num_samples, H, P, n) from ``generator`` (stable-worldmodel's draw)."""
    b, h, p, n = probs.shape
    u = torch.rand((b, num_samples, h, p, n), generator=generator, device=probs.device, dtype=probs.dtype)
    return gumbel_argmax(probs, u)


def refit_probs(probs: torch.Tensor, elites: torch.Tensor, smoothing: float, alpha: float) -> torch.Tensor:
    """probs (B, H, P, n) and the elites' one-hots (B, k, H, P, n) -> the refit probabilities: the elites' category
    frequencies, + ``smoothing`` and renormalised when > 0, then ``alpha`` x probs + (1 - alpha) x those when > 0."""
    new = elites.mean(dim=1)
    if smoothing > 0:
        new = new + smoothing
        new = new / new.sum(dim=-1, keepdim=True)
    return alpha * probs + (1 - alpha) * new if alpha > 0 else new


class CategoricalCEMPlanner(PlannerBase):
    """stable-worldmodel's ``CategoricalCEMSolver`` on the rollout engine, over a discrete action set: every
    action-block entry of every horizon step chooses one of ``bins`` values spanning ``action_bounds`` (the env's box
    in normalised units, e.g. ``bounds.normalized_box``; see ``discrete.ActionGrid``).

    Per plan the categorical probabilities (B, horizon, A, bins) start uniform (the warm start is not used, as
    stable-worldmodel's solver ignores ``init_action``). Per iteration: ``num_samples`` candidates by Gumbel-max
    (candidate 0 = each entry's most likely value), their costs, and the probabilities <- the ``topk`` elites' value
    frequencies (``refit_probs``: ``smoothing``, ``alpha`` momentum). The plan is each entry's most likely value,
    (B, horizon, A) float32. Diagnostics per iteration: the elite costs (B, topk), that plan and the std of the value
    each entry's distribution picks. On CPU the uniforms are ``torch.rand(B, N, horizon, A, bins, generator=g)`` per
    iteration as stable-worldmodel draws them; with Triton they are Philox normals through the normal CDF (one key
    per iteration), and on CUDA the plan is one replayed CUDA graph. Fewer than ``topk`` finite costs raise
    ValueError after the plan.
    """

    def __init__(
        self,
        model: LeWM,
        action_bounds: BoundsLike,
        bins: int = 3,
        num_samples: int = 300,
        topk: int = 30,
        n_steps: int = 30,
        horizon: int = 5,
        receding_horizon: int = 5,
        smoothing: float = 0.0,
        alpha: float = 0.0,
        backend: str = "auto",
        dtype: Optional[torch.dtype] = None,
        seed: Optional[int] = None,
        engine: Optional[RolloutEngine] = None,
        cuda_graph: bool = True,
        precision: str = "ieee",
    ):
        if not smoothing >= 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        super().__init__(
            model, num_samples=num_samples, topk=topk, n_steps=n_steps, horizon=horizon,
            receding_horizon=receding_horizon, backend=backend, dtype=dtype, seed=seed, engine=engine,
            cuda_graph=cuda_graph, precision=precision,
        )
        self.grid = ActionGrid(action_bounds, bins, model.action_dim, self.device)
        self.bins = bins
        self.smoothing, self.alpha = float(smoothing), float(alpha)

    def _new_buffers(self, emb_ctx: torch.Tensor) -> LoopBuffers:
        buf = super()._new_buffers(emb_ctx)
        buf.extra["probs"] = torch.empty(*buf.init_mean.shape, self.bins, device=emb_ctx.device)
        return buf

    def _uniform(self, shape: torch.Size, key_offset: int) -> torch.Tensor:
        """Uniforms in [0, 1) of ``shape`` for iteration ``key_offset``'s draw."""
        if isinstance(self.noise, PhiloxNoise):
            normal = self.noise.normal_(torch.empty(shape, device=self.device), key_offset)
            return torch.special.ndtr(normal).clamp_max_(_BELOW_ONE)
        return torch.rand(shape, generator=self.noise.generator, device=self.device)

    def _loop(self, buf: LoopBuffers) -> None:
        probs, cand = buf.extra["probs"], buf.cand[0]
        b, n = cand.shape[:2]
        probs.fill_(1.0 / self.bins)
        buf.bad.zero_()
        rows = torch.arange(b, device=cand.device).unsqueeze(1)
        for i in range(self.n_steps):
            index = gumbel_argmax(probs, self._uniform(torch.Size((b, n, *probs.shape[1:])), i))
            index[:, 0] = probs.argmax(dim=-1)
            cand.copy_(self.grid.take(index))
            costs = self.loop_costs(buf, cand)
            clean = torch.where(torch.isnan(costs), float("inf"), costs)
            torch.topk(clean, self.topk, dim=1, largest=False, out=(buf.elite_costs[i], buf.elite_idx))
            probs.copy_(refit_probs(probs, self.grid.one_hot(index[rows, buf.elite_idx]), self.smoothing, self.alpha))
            buf.means[i].copy_(self.grid.take(probs.argmax(dim=-1)))
            buf.stds[i].copy_(self.grid.spread(probs))
            buf.bad.bitwise_or_((~torch.isfinite(buf.elite_costs[i][:, -1])).int())
        self.advance_noise_()
