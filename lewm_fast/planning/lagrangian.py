"""Augmented-Lagrangian gradient planning (stable-worldmodel's ``LagrangianSolver``): minimise the goal cost subject to
constraint costs ``g(candidates) <= 0``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F

from .._validation import check_positive_int
from ..reference.lewm import LeWM
from .base import LoopBuffers
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike
from .gradient import GradientPlanner
from .rollout import RolloutEngine

Constraints = Callable[[torch.Tensor], torch.Tensor]  # candidates (B, N, T, A) -> constraint costs (B, N, C)


def augmented_lagrangian_loss(costs: torch.Tensor, constraints: torch.Tensor, lambdas: torch.Tensor,
                              rho: float) -> torch.Tensor:
    """costs (B, S), constraints (B, S, C), lambdas (B, C) -> ``sum(cost + sum_i lambda_i g_i + rho sum_i
    max(0, g_i)^2)`` (a scalar)."""
    linear = (lambdas.unsqueeze(1) * constraints).sum(dim=-1)
    quadratic = rho * F.relu(constraints).pow(2).sum(dim=-1)
    return (costs + linear + quadratic).sum()


def update_multipliers(constraints: torch.Tensor, lambdas: torch.Tensor, rho: float) -> torch.Tensor:
    """Dual ascent: ``lambda <- max(0, lambda + rho * mean over samples of g)``; constraints (B, S, C), lambdas
    (B, C)."""
    return torch.clamp(lambdas + rho * constraints.mean(dim=1), min=0.0)


def box_constraints(low: torch.Tensor, high: torch.Tensor) -> Constraints:
    """Constraint costs keeping every action value inside [low, high] (each (A,)): per candidate the largest
    violation of any step, ``g = (max over steps of (a - high), max over steps of (low - a))`` -> (B, N, 2A)."""
    def g(candidates: torch.Tensor) -> torch.Tensor:
        return torch.cat([(candidates - high).amax(dim=2), (low - candidates).amax(dim=2)], dim=-1)
    return g


class LagrangianPlanner(GradientPlanner):
    """Augmented-Lagrangian gradient descent: ``n_outer_steps`` rounds of ``n_steps`` steps of a fresh
    ``optimizer_cls`` (default Adam, lr 1.0, as stable-worldmodel) on ``cost + sum_i lambda_i g_i + rho sum_i
    max(0, g_i)^2``, each followed by dual ascent on the multipliers and ``rho <- min(rho_max, rho x rho_scale)``.

    ``constraints``: a callable on the candidates (B, N, T, A) -> constraint costs (B, N, C), satisfied when <= 0
    (e.g. ``box_constraints(low, high)`` for action bounds in the model's normalised units); None descends the cost
    alone (then this is ``GradientPlanner`` with Adam and restarts). Multipliers start at 0 for each plan. The plan is
    the sample of lowest goal cost at the last step; ``n_steps`` (the attribute) counts all gradient steps
    (``n_outer_steps x`` the argument), as do the diagnostics.
    """

    def __init__(
        self,
        model: LeWM,
        num_samples: int = 300,
        n_steps: int = 10,
        n_outer_steps: int = 3,
        horizon: int = 5,
        receding_horizon: int = 5,
        var_scale: float = 1.0,
        action_noise: float = 0.0,
        constraints: Optional[Constraints] = None,
        rho_init: float = 1.0,
        rho_max: float = 1e4,
        rho_scale: float = 2.0,
        optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
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
        check_positive_int(n_steps, "n_steps")
        check_positive_int(n_outer_steps, "n_outer_steps")
        if not (rho_init >= 0 and rho_max >= rho_init and rho_scale >= 1):
            raise ValueError(f"need 0 <= rho_init <= rho_max and rho_scale >= 1, got rho_init={rho_init}, "
                             f"rho_max={rho_max}, rho_scale={rho_scale}")
        if constraints is not None and not callable(constraints):
            raise TypeError(f"constraints must be a callable (candidates -> (B, N, C)) or None, got {constraints!r}")
        super().__init__(
            model, num_samples=num_samples, n_steps=n_steps * n_outer_steps, horizon=horizon,
            receding_horizon=receding_horizon, var_scale=var_scale, action_noise=action_noise,
            optimizer_cls=optimizer_cls, optimizer_kwargs=optimizer_kwargs, backend=backend, dtype=dtype, seed=seed,
            engine=engine, cuda_graph=cuda_graph, precision=precision, action_bounds=action_bounds,
            bounds_mode=bounds_mode, bounds_weight=bounds_weight,
        )
        self.inner_steps, self.n_outer_steps = n_steps, n_outer_steps
        self.constraints = constraints
        self.rho_init, self.rho_max, self.rho_scale = float(rho_init), float(rho_max), float(rho_scale)

    def _loop(self, buf: LoopBuffers) -> None:
        self._start_plan()
        with torch.inference_mode(False), torch.enable_grad():
            params = self._initial_samples(buf).detach().clone().requires_grad_(True)
            rho, lambdas = self.rho_init, None
            for outer in range(self.n_outer_steps):
                loss_fn, state = self._lagrangian(buf, lambdas, rho)
                optimizer = self._optimizer(buf, params)
                self._descend(buf, params, optimizer, loss_fn, self.inner_steps, outer * self.inner_steps)
                if self.constraints is not None:
                    with torch.no_grad():
                        lambdas = update_multipliers(self.constraints(params), state["lambdas"], rho)
                    rho = min(self.rho_max, rho * self.rho_scale)
        self._end_plan()

    def _lagrangian(self, buf: LoopBuffers, lambdas: Optional[torch.Tensor],
                    rho: float) -> Tuple[Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]], Dict[str, Any]]:
        state: Dict[str, Any] = {"lambdas": lambdas}

        def loss(params: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            costs = self.loop_costs(buf, params)
            if self.constraints is None:
                return costs.sum(), costs
            g = self.constraints(params)
            if state["lambdas"] is None:
                state["lambdas"] = g.new_zeros(g.shape[0], g.shape[-1])
            return augmented_lagrangian_loss(costs, g, state["lambdas"], rho), costs

        return loss, state
