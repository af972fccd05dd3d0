"""Projected gradient descent on the action simplex, for discrete actions (stable-worldmodel's ``PGDSolver``): each
block position holds a point of the n-category simplex, fed to the model as a (relaxed) one-hot block.
``PGDPlanner`` plans over the discrete set of a continuous-action env (``discrete.ActionGrid``)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

import torch

from ..reference.lewm import LeWM
from .base import LoopBuffers
from .bounds import BoundsLike
from .discrete import ActionGrid
from .gradient import GradientPlanner, best_samples
from .rollout import RolloutEngine


def project_simplex(x: torch.Tensor, n: int) -> torch.Tensor:
    """Euclidean projection of every consecutive group of ``n`` values of ``x`` (..., P * n) onto the probability
    simplex {p >= 0, sum p = 1} (the sort-based algorithm of Duchi et al. 2008, as stable-worldmodel computes it)."""
    shape = x.shape
    s = x.reshape(-1, n)
    mu = torch.sort(s, descending=True, dim=-1).values
    cumulative = mu.cumsum(dim=-1)
    indices = torch.arange(1, n + 1, device=s.device, dtype=s.dtype)
    cond = (mu > (cumulative - 1) / indices).to(torch.int32)
    rho = (cond.cumsum(dim=-1) * cond).max(dim=-1, keepdim=True)[0].clamp(min=1)
    psi = (cumulative.gather(-1, rho.long() - 1) - 1) / rho
    return torch.clamp(s - psi, min=0.0).reshape(shape)


class PGDPlanner(GradientPlanner):
    """stable-worldmodel's ``PGDSolver`` on the rollout engine, over a discrete action set: every action-block entry
    of every horizon step chooses one of ``bins`` values spanning ``action_bounds`` (the env's box in normalised
    units, e.g. ``bounds.normalized_box``; see ``discrete.ActionGrid``).

    The samples are simplex points (B, num_samples, horizon, A, bins), decoded to actions as the expectation of the
    bin values (the relaxed one-hot through a fixed linear codebook) for the costs. Sample 0 starts at the one-hot of
    the warm start's nearest values (``init_mean`` / the previous plan; the default zeros' nearest otherwise), the
    others there + ``var_scale`` x N(0, 1); then ``n_steps`` steps of ``optimizer_cls(**optimizer_kwargs)`` (default
    SGD, lr 1.0, as stable-worldmodel's) on the summed costs, ``action_noise`` after each step, and every sample
    projected back onto the simplex (``project_simplex``), in stable-worldmodel's order (the starting samples are not
    projected). The plan is the argmax bin of each entry of the sample whose cost was lowest at the last step: actions
    of the discrete set, (B, horizon, A) float32. Diagnostics per step: that plan, the spread of the decoded samples
    and the lowest cost. Gradients come from the fused rollout's backward (``RolloutEngine.costs``), weights frozen.
    """

    def __init__(
        self,
        model: LeWM,
        action_bounds: BoundsLike,
        bins: int = 3,
        num_samples: int = 300,
        n_steps: int = 30,
        horizon: int = 5,
        receding_horizon: int = 5,
        var_scale: float = 1.0,
        action_noise: float = 0.0,
        optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.SGD,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        grad_clip: Optional[float] = None,
        backend: str = "auto",
        dtype: Optional[torch.dtype] = None,
        seed: Optional[int] = None,
        engine: Optional[RolloutEngine] = None,
        cuda_graph: bool = True,
        precision: str = "ieee",
    ):
        super().__init__(
            model, num_samples=num_samples, n_steps=n_steps, horizon=horizon, receding_horizon=receding_horizon,
            var_scale=var_scale, action_noise=action_noise, optimizer_cls=optimizer_cls,
            optimizer_kwargs=optimizer_kwargs, grad_clip=grad_clip, backend=backend, dtype=dtype, seed=seed,
            engine=engine, cuda_graph=cuda_graph, precision=precision,
        )
        self.grid = ActionGrid(action_bounds, bins, model.action_dim, self.device)
        self.bins = bins

    def project(self, simplex: torch.Tensor) -> torch.Tensor:
        """(..., A, bins) -> each entry's weights projected onto the probability simplex."""
        return project_simplex(simplex, self.bins)

    def _initial_samples(self, buf: LoopBuffers) -> torch.Tensor:
        """(B, N, T, A, bins): the one-hot of the warm start's nearest values, + var_scale x N(0, 1) on samples 1.."""
        start = self.grid.one_hot(self.grid.nearest(buf.init_mean))
        x = start.unsqueeze(1).repeat(1, self.num_samples, 1, 1, 1)
        if self.num_samples > 1:
            x[:, 1:] += self._noise(x[:, 1:].shape) * self.var_scale
        return x

    def _loop(self, buf: LoopBuffers) -> None:
        self._start_plan()
        with torch.inference_mode(False), torch.enable_grad():
            params = self._initial_samples(buf).requires_grad_(True)
            optimizer = self._optimizer(buf, params)

            def loss(p: torch.Tensor):
                costs = self.loop_costs(buf, self.grid.decode(p))
                return costs.sum(), costs

            self._descend(buf, params, optimizer, loss, self.n_steps, 0, project=self.project)
        self._end_plan()

    @torch.no_grad()
    def _record(self, buf: LoopBuffers, step: int, params: torch.Tensor, costs: torch.Tensor) -> None:
        buf.means[step].copy_(self.grid.take(best_samples(params, costs).argmax(-1)))
        decoded = self.grid.decode(params)
        buf.stds[step].copy_(decoded.std(1) if decoded.shape[1] > 1 else torch.zeros_like(buf.stds[step]))
        buf.elite_costs[step].copy_(costs.amin(1, keepdim=True))
