"""Reference CEM planner (eager PyTorch), the oracle for ``lewm_fast.CEMPlanner``.

Per iteration: candidates = randn * std + mean with candidate 0 = mean; cost = ||last rolled-out latent - goal||^2;
elites = the ``topk`` lowest costs (stable order, NaN/inf never preferred); mean, std = elite mean, unbiased std.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import torch

from .._validation import check_positive_int, check_tensor
from .lewm import LeWM


def goal_mse_cost(last_latent: torch.Tensor, goal_emb: torch.Tensor) -> torch.Tensor:
    """Squared distance summed over D: last_latent (B,S,D), goal_emb (B,D) -> (B,S)."""
    return (last_latent - goal_emb.unsqueeze(1)).square().sum(-1)


class EliteRefit(NamedTuple):
    mean: torch.Tensor  # (B, T, A)
    std: torch.Tensor  # (B, T, A), unbiased
    elite_idx: torch.Tensor  # (B, k) int64, ascending cost
    elite_costs: torch.Tensor  # (B, k)


def elite_refit_reference(candidates: torch.Tensor, costs: torch.Tensor, topk: int) -> EliteRefit:
    """candidates (B,N,T,A), costs (B,N) -> refit from the ``topk`` lowest costs (NaN counts as +inf; ties by index)."""
    clean = torch.where(torch.isnan(costs), torch.full_like(costs, float("inf")), costs)
    order = torch.sort(clean, dim=1, stable=True).indices[:, :topk]
    idx = order.view(*order.shape, 1, 1).expand(-1, -1, *candidates.shape[2:])
    elites = torch.gather(candidates, 1, idx)
    elite_costs = torch.gather(clean, 1, order)
    if not bool(torch.isfinite(elite_costs).all()):
        bad = int((~torch.isfinite(clean)).sum(1).max())
        raise ValueError(
            f"fewer than topk={topk} candidates have a finite cost ({bad} of {costs.shape[1]} are NaN/inf in some "
            "environment): the model diverged; NaN/inf candidates are never used as elites"
        )
    return EliteRefit(elites.mean(1), elites.std(1), order, elite_costs)


def sample_candidates(
    mean: torch.Tensor, std: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """mean, std (B,T,A) -> candidates (B,N,T,A) = randn * std + mean, candidate 0 = mean."""
    b, t, a = mean.shape
    noise = torch.randn(b, num_samples, t, a, device=mean.device, dtype=mean.dtype, generator=generator)
    cand = noise * std.unsqueeze(1) + mean.unsqueeze(1)
    cand[:, 0] = mean
    return cand


def check_cem_settings(num_samples: int, topk: int, n_steps: int, horizon: int, receding_horizon: int, var_scale: float) -> None:
    """Validate a sampling planner's settings (shared by the reference and the fast planners)."""
    check_positive_int(num_samples, "num_samples", 2)
    check_positive_int(topk, "topk", 2)
    check_positive_int(n_steps, "n_steps")
    check_positive_int(horizon, "horizon")
    check_positive_int(receding_horizon, "receding_horizon")
    if topk > num_samples:
        raise ValueError(f"topk ({topk}) must be <= num_samples ({num_samples})")
    if receding_horizon > horizon:
        raise ValueError(f"receding_horizon ({receding_horizon}) must be <= horizon ({horizon})")
    if not var_scale > 0:
        raise ValueError(f"var_scale must be > 0, got {var_scale}")


def prepare_inputs(model: LeWM, obs: torch.Tensor, goal: torch.Tensor,
                   latent: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and encode context and goal (shared by the reference and the fast planners): obs pixels (B,H,3,h,w) and
    goal pixels (B,3,h,w), or with ``latent=True`` latents (B,H,D) and (B,D) -> emb_ctx (B,H,D), goal_emb (B,D)."""
    if latent:
        check_tensor(obs, "obs", ndim=3, last_dim=model.latent_dim, finite=True)
        check_tensor(goal, "goal", ndim=2, last_dim=model.latent_dim, finite=True)
        emb_ctx, goal_emb = obs, goal
    else:
        check_tensor(obs, "obs", ndim=5, finite=True)
        check_tensor(goal, "goal", ndim=4, finite=True)
        if goal.shape[0] != obs.shape[0] or goal.shape[1:] != obs.shape[2:]:
            raise ValueError(f"goal (B,3,h,w) must match obs (B,H,3,h,w) in B and frame shape, got {tuple(goal.shape)} "
                             f"vs {tuple(obs.shape)}")
        emb_ctx = model.encode(obs)
        goal_emb = model.encode(goal.unsqueeze(1))[:, 0]
    if goal_emb.shape[0] != emb_ctx.shape[0]:
        raise ValueError(f"goal batch {goal_emb.shape[0]} != obs batch {emb_ctx.shape[0]}")
    if emb_ctx.shape[1] > model.history_size:
        raise ValueError(f"obs holds {emb_ctx.shape[1]} frames but the model's window is {model.history_size}")
    return emb_ctx, goal_emb


def check_action_inputs(action_dim: int, horizon: int, b: int, h: int, action_history: Optional[torch.Tensor],
                        init_mean: Optional[torch.Tensor], device: torch.device,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a plan's action inputs (shared by the reference and the fast planners) -> action_history (B,H-1,A) and
    the initial mean (B,horizon,A), zeros of ``device``/``dtype`` when None."""
    a = action_dim
    if action_history is None:
        action_history = torch.zeros(b, h - 1, a, device=device, dtype=dtype)
    check_tensor(action_history, "action_history", ndim=3, last_dim=a, finite=True, nonempty=False)
    if tuple(action_history.shape[:2]) != (b, h - 1):
        raise ValueError(f"action_history must have shape (B={b}, H-1={h - 1}, {a}), got {tuple(action_history.shape)}")
    if init_mean is None:
        init_mean = torch.zeros(b, horizon, a, device=device, dtype=dtype)
    check_tensor(init_mean, "init_mean", ndim=3, last_dim=a, finite=True)
    if tuple(init_mean.shape[:2]) != (b, horizon):
        raise ValueError(f"init_mean must have shape (B={b}, horizon={horizon}, {a}), got {tuple(init_mean.shape)}")
    return action_history, init_mean


@dataclass
class PlanDiagnostics:
    """Per-iteration history: elite costs (B,k), mean and std (B,T,A) after each refit."""

    elite_costs: List[torch.Tensor] = field(default_factory=list)
    mean: List[torch.Tensor] = field(default_factory=list)
    std: List[torch.Tensor] = field(default_factory=list)


class CEMSolver:
    """Eager CEM over action sequences with a LeWM. ``plan(obs, goal) -> (B, horizon, action_dim)``.

    obs: context pixels (B,H,3,h,w) (H <= history_size) or latents (B,H,D) with ``latent=True``; goal: pixels (B,3,h,w)
    or a goal latent (B,D). ``action_history`` (B,H-1,A) defaults to zeros; ``init_mean`` (B,horizon,A) warm-starts.
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
        seed: Optional[int] = None,
    ):
        check_cem_settings(num_samples, topk, n_steps, horizon, receding_horizon, var_scale)
        self.model = model
        self.num_samples, self.topk, self.n_steps = num_samples, topk, n_steps
        self.horizon, self.receding_horizon, self.var_scale = horizon, receding_horizon, var_scale
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator(device=self._device).manual_seed(seed)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, obs: torch.Tensor, goal: torch.Tensor, latent: bool = False):
        """Check and encode context and goal (``prepare_inputs``): -> emb_ctx (B,H,D), goal_emb (B,D)."""
        return prepare_inputs(self.model, obs, goal, latent)

    def check_actions(self, b: int, h: int, action_history: Optional[torch.Tensor], init_mean: Optional[torch.Tensor], device, dtype):
        """``check_action_inputs`` for this solver's model and horizon."""
        return check_action_inputs(self.model.action_dim, self.horizon, b, h, action_history, init_mean, device, dtype)

    def costs(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, goal_emb: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Costs (B,N) of candidates (B,N,T,A) from context emb_ctx (B,H,D)."""
        b, n = candidates.shape[:2]
        ctx = emb_ctx.unsqueeze(1).expand(b, n, *emb_ctx.shape[1:])
        hist = action_history.unsqueeze(1).expand(b, n, *action_history.shape[1:])
        latents = self.model.rollout(ctx, hist, candidates)
        return goal_mse_cost(latents[:, :, -1], goal_emb)

    @torch.no_grad()
    def plan(
        self,
        obs: torch.Tensor,
        goal: torch.Tensor,
        action_history: Optional[torch.Tensor] = None,
        init_mean: Optional[torch.Tensor] = None,
        latent: bool = False,
        return_diagnostics: bool = False,
    ):
        emb_ctx, goal_emb = self.prepare(obs, goal, latent)
        b, h, _ = emb_ctx.shape
        action_history, mean = self.check_actions(b, h, action_history, init_mean, emb_ctx.device, emb_ctx.dtype)
        std = torch.full_like(mean, self.var_scale)
        diag = PlanDiagnostics()
        for _ in range(self.n_steps):
            cand = sample_candidates(mean, std, self.num_samples, self.generator)
            costs = self.costs(emb_ctx, action_history, goal_emb, cand)
            mean, std, _, elite_costs = elite_refit_reference(cand, costs, self.topk)
            if return_diagnostics:
                diag.elite_costs.append(elite_costs)
                diag.mean.append(mean)
                diag.std.append(std)
        return (mean, diag) if return_diagnostics else mean
