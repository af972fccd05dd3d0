"""The gradient solvers: ``GradientSolver``, ``LagrangianSolver`` and the discrete ``PGDSolver``, with
stable-worldmodel 0.1.1's arguments, defaults, attributes (they are ``nn.Module``s whose ``init`` parameter holds the
samples) and return dicts. Any ``Costable`` is descended through its own ``get_cost``; a LeWM through the fused
engine's differentiable costs (``RolloutEngine.paired_costs`` / ``costs`` with ``candidates.requires_grad``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F

from ...planning.gradient import best_samples, descend_
from ...planning.lagrangian import augmented_lagrangian_loss, update_multipliers
from ...planning.pgd import project_simplex
from ._base import SolverBase, check_batch_size, check_costs, expand_info, is_box, prepare_init_action


class _GradientBase(SolverBase, torch.nn.Module):
    """Unconfigured state as stable-worldmodel's gradient solvers keep it: ``_configured`` False and ``_n_envs``,
    ``_action_dim``, ``_config`` None (so ``n_envs`` is None and ``action_dim`` / ``horizon`` raise AttributeError)."""

    def _setup(self, model: Any, n_steps: int, batch_size: Optional[int], var_scale: float, num_samples: int,
               action_noise: float, device: Any, seed: int, callbacks: Optional[List[Any]], history_pairing: str,
               backend: str, bounds: Tuple[Any, str, float] = (None, "clip", 10.0)) -> None:
        torch.nn.Module.__init__(self)
        check_batch_size(batch_size, allow_none=True)
        self.n_steps, self.batch_size, self.num_samples = n_steps, batch_size, num_samples
        self.var_scale, self.action_noise = var_scale, action_noise
        self._init_common(model, device, seed, callbacks, history_pairing, backend, *bounds)
        self._configured = False
        self._n_envs: Optional[int] = None
        self._action_dim: Optional[int] = None
        self._config: Any = None

    @property
    def n_envs(self) -> Optional[int]:
        """Number of parallel environments (None before configure, as there)."""
        return self._n_envs

    def _set_init(self, actions: torch.Tensor, reuse_any_shape: bool) -> None:
        """Store the samples as the ``init`` parameter (re-registered when the shape changes)."""
        if hasattr(self, "init") and (reuse_any_shape or self.init.shape == actions.shape):
            self.init.copy_(actions)
            return
        if "init" in self._parameters:
            del self._parameters["init"]
        self.register_parameter("init", torch.nn.Parameter(actions))

    def _perturb(self, actions: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """(n_envs, horizon, A) -> (n_envs, num_samples, horizon, A): sample 0 as given, the others + var_scale x
        N(0, 1)."""
        actions = actions.unsqueeze(1).repeat_interleave(self.num_samples, dim=1)
        kwargs = {} if dtype is None else {"dtype": dtype}
        actions[:, 1:] += torch.randn(actions[:, 1:].shape, generator=self.torch_gen, device=self.device,
                                      **kwargs) * self.var_scale
        return actions

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.torch_gen)

    def _descend_chunks(self, info_dict: dict, total: int, loss_for: Any, others: str, copy: bool,
                        name: str) -> Tuple[List[torch.Tensor], List[List[float]]]:
        """Per chunk of ``batch_size`` envs: ``loss_for(cost_fn, params, lo, hi)`` runs the descent -> the chunk's best
        samples (CPU) and loss histories."""
        batch_size = self.batch_size if self.batch_size is not None else total
        tops, history = [], []
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            params = self._clip(self.init[lo:hi].clone().detach())
            params.requires_grad = True
            cost_fn, _ = self._cost_fn(info_dict, lo, hi, self.num_samples, others=others, copy=copy)

            def costs_of(p: torch.Tensor, lo: int = lo, hi: int = hi) -> torch.Tensor:
                return check_costs(cost_fn(p), hi - lo, self.num_samples, grad=name)

            costs, losses = loss_for(costs_of, params, lo, hi)
            history.append(losses.tolist())
            with torch.no_grad():
                self.init[lo:hi] = params
            tops.append(self._top_actions(params, costs).detach().cpu())
        return tops, history

    def _top_actions(self, params: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        return best_samples(params, costs)

    def _projection(self) -> Optional[Any]:
        """With ``action_bounds`` in clip mode, the samples are clamped into them after every step."""
        bounds = self.__dict__.get("_bounds")
        return self._clip if bounds is not None and bounds.mode == "clip" else None


class GradientSolver(_GradientBase):
    """stable-worldmodel's ``GradientSolver`` (gd.py): ``num_samples`` action sequences per env (sample 0 the warm
    start, the others + ``var_scale`` noise) descended for ``n_steps`` steps of ``optimizer_cls(**optimizer_kwargs)``
    (default SGD, lr 1.0) on the summed costs, ``grad_clip`` on the gradient norm, ``action_noise`` after each step.
    -> ``{"actions": (B, horizon, A) the sample with the lowest last-step cost, "cost": [per chunk: the summed cost of
    each step]}`` (+ ``"callbacks"``). ``batch_size=None`` descends all envs at once."""

    def __init__(self, model: Any, n_steps: int, batch_size: Optional[int] = None, var_scale: float = 1,
                 num_samples: int = 1, action_noise: float = 0.0, device: Any = "cpu", seed: int = 1234,
                 optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.SGD, optimizer_kwargs: Optional[dict] = None,
                 grad_clip: Optional[float] = None, callbacks: Optional[List[Any]] = None, *,
                 history_pairing: str = "swm", backend: str = "auto",
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0) -> None:
        self._setup(model, n_steps, batch_size, var_scale, num_samples, action_noise, device, seed, callbacks,
                    history_pairing, backend, (action_bounds, bounds_mode, bounds_weight))
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = optimizer_kwargs if optimizer_kwargs is not None else {"lr": 1.0}
        self.grad_clip = grad_clip

    def init_action(self, n_envs: int, actions: Optional[torch.Tensor] = None) -> None:
        """``init`` <- (n_envs, num_samples, horizon, A) samples around ``actions`` (zero-padded to the horizon)."""
        if actions is None:
            actions = torch.zeros((n_envs, 0, self.action_dim), dtype=self.dtype)
        remaining = self.horizon - actions.shape[1]
        if remaining > 0:
            pad = torch.zeros(n_envs, remaining, self.action_dim, dtype=self.dtype)
            actions = torch.cat([actions, pad], dim=1).to(self.device)
        self._set_init(self._perturb(actions, self.dtype), reuse_any_shape=False)

    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None) -> dict:
        total = len(next(iter(info_dict.values())))
        with torch.no_grad():
            init_action = prepare_init_action(self.model, info_dict, init_action, self.horizon, total, self.action_dim)
            self.init_action(total, init_action)
        self._cb_reset()

        def descend(costs_of: Any, params: torch.Tensor, lo: int, hi: int) -> Tuple[torch.Tensor, torch.Tensor]:
            self._cb_start_batch()

            def on_backward(step: int, loss: torch.Tensor, costs: torch.Tensor) -> None:
                self._cb_step(step=step, params=params, cost=loss, costs=costs)

            optimizer = self.optimizer_cls([params], **self.optimizer_kwargs)
            return descend_(params, lambda p: _summed(costs_of(p)), self.n_steps, optimizer, self.grad_clip,
                            self.action_noise, self._noise, self._projection(), on_backward)

        with torch.inference_mode(False), torch.enable_grad():
            tops, history = self._descend_chunks(info_dict, total, descend, "slice", False, "GD solver")
        return self._cb_finish({"cost": history, "actions": torch.cat(tops, dim=0)})


def _summed(costs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return costs.sum(), costs


class LagrangianSolver(_GradientBase):
    """stable-worldmodel's ``LagrangianSolver`` (lagrangian.py): augmented-Lagrangian gradient descent. When the model
    has ``get_constraints(info_dict, candidates) -> (B, S, C)`` (constraint costs, satisfied when <= 0) each of
    ``n_outer_steps`` rounds runs ``n_steps`` steps of a fresh ``optimizer_cls`` (default Adam, lr 1.0) on
    ``cost + sum_i lambda_i g_i + rho sum_i max(0, g_i)^2``, then dual ascent
    ``lambda <- max(0, lambda + rho mean_S g)``
    and ``rho <- min(rho_max, rho x rho_scale)``; multipliers (n_envs, C) persist across solves with
    ``persist_multipliers``. Without constraints it descends the summed cost. -> ``{"actions", "cost" (per chunk, the
    loss of each step), "constraint_violation" (per chunk, mean max(0, g) after the last round), "lambdas"}``.

    On a LeWM, ``get_constraints`` is looked up on the model as there (a stable-worldmodel LeWM has none); give a
    constrained problem to ``lewm_fast.planning.LagrangianPlanner`` with ``constraints=``.
    """

    def __init__(self, model: Any, n_steps: int, n_outer_steps: int = 5, batch_size: Optional[int] = None,
                 num_samples: int = 1, var_scale: float = 1.0, action_noise: float = 0.0, rho_init: float = 1.0,
                 rho_max: float = 1e4, rho_scale: float = 2.0, persist_multipliers: bool = True, device: Any = "cpu",
                 seed: int = 1234, optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_kwargs: Optional[dict] = None, *, history_pairing: str = "swm", backend: str = "auto",
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0) -> None:
        self._setup(model, n_steps, batch_size, var_scale, num_samples, action_noise, device, seed, None,
                    history_pairing, backend, (action_bounds, bounds_mode, bounds_weight))
        self.n_outer_steps = n_outer_steps
        self.rho_init, self.rho_max, self.rho_scale = rho_init, rho_max, rho_scale
        self.persist_multipliers = persist_multipliers
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = optimizer_kwargs if optimizer_kwargs is not None else {"lr": 1.0}
        self._lambdas: Optional[torch.Tensor] = None  # (n_envs, C)

    def init_action(self, actions: Optional[torch.Tensor] = None) -> None:
        """``init`` <- (n_envs, num_samples, horizon, A) samples around ``actions`` (zero-padded to the horizon)."""
        if actions is None:
            actions = torch.zeros((self._n_envs, 0, self.action_dim))
        remaining = self.horizon - actions.shape[1]
        if remaining > 0:
            actions = torch.cat([actions, torch.zeros(self._n_envs, remaining, self.action_dim)], dim=1).to(self.device)
        self._set_init(self._perturb(actions), reuse_any_shape=True)

    def _init_multipliers(self, num_constraints: int) -> None:
        self._lambdas = torch.zeros(self._n_envs, num_constraints, device=self.device)

    def _augmented_lagrangian_loss(self, costs: torch.Tensor, constraints: torch.Tensor, lambdas_batch: torch.Tensor,
                                   rho: float) -> torch.Tensor:
        return augmented_lagrangian_loss(costs, constraints, lambdas_batch, rho)

    def _update_multipliers(self, constraints: torch.Tensor, lambdas_batch: torch.Tensor, rho: float) -> torch.Tensor:
        return update_multipliers(constraints, lambdas_batch, rho)

    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None) -> dict:
        outputs: Dict[str, Any] = {"cost": [], "constraint_violation": [], "actions": None, "lambdas": None}
        with torch.no_grad():
            init_action = prepare_init_action(self.model, info_dict, init_action, self.horizon, self.n_envs,
                                              self.action_dim)
            self.init_action(init_action)
        if not self.persist_multipliers:
            self._lambdas = None
        get_constraints = getattr(self.model, "get_constraints", None)

        def descend(costs_of: Any, params: torch.Tensor, lo: int, hi: int) -> Tuple[torch.Tensor, torch.Tensor]:
            expanded = self._expanded(info_dict, lo, hi)
            rho, costs, losses, final_g, lambdas = self.rho_init, None, [], None, None
            for _ in range(self.n_outer_steps):
                state: Dict[str, Any] = {}

                def loss_fn(p: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
                    nonlocal lambdas
                    c = costs_of(p)
                    g = get_constraints(expanded.copy(), p) if get_constraints is not None else None
                    state["g"] = g
                    if g is None:
                        return c.sum(), c
                    assert g.ndim == 3 and g.shape[:2] == (hi - lo, self.num_samples), (
                        f"Constraints should be of shape ({hi - lo}, {self.num_samples}, C), got {g.shape}")
                    if self._lambdas is None:
                        self._init_multipliers(g.shape[-1])
                    lambdas = self._lambdas[lo:hi]
                    return self._augmented_lagrangian_loss(c, g, lambdas, rho), c

                optimizer = self.optimizer_cls([params], **self.optimizer_kwargs)
                costs, step_losses = descend_(params, loss_fn, self.n_steps, optimizer, None, self.action_noise,
                                              self._noise, self._projection())
                losses.append(step_losses)
                if state.get("g") is not None:
                    with torch.no_grad():
                        final_g = get_constraints(expanded.copy(), params)
                        lambdas = self._update_multipliers(final_g, lambdas, rho)
                        self._lambdas[lo:hi] = lambdas
                        rho = min(self.rho_max, rho * self.rho_scale)
            if final_g is not None:
                outputs["constraint_violation"].append(F.relu(final_g).mean().item())
            return costs, torch.cat(losses) if losses else params.new_zeros(0)

        with torch.inference_mode(False), torch.enable_grad():
            tops, outputs["cost"] = self._descend_chunks(info_dict, self.n_envs, descend, "keep", True,
                                                         "LagrangianSolver")
        outputs["actions"] = torch.cat(tops, dim=0)
        outputs["lambdas"] = self._lambdas.cpu() if self._lambdas is not None else None
        return outputs

    def _expanded(self, info_dict: dict, lo: int, hi: int) -> dict:
        """The info dict as stable-worldmodel's Lagrangian solver hands ``get_constraints``."""
        return expand_info(info_dict, lo, hi, self.num_samples, self.device, None, "keep")


class PGDSolver(_GradientBase):
    """stable-worldmodel's ``PGDSolver`` (pgd.py) for a Discrete action space of n categories: per block position a
    point of the n-simplex (``init``: (n_envs, num_samples, horizon, action_block * n)), SGD (lr 1.0) on the summed
    costs with ``action_noise``, projected back onto the simplex after each step. -> ``{"actions": (B, horizon,
    action_block) the argmax categories of the best sample, "cost"}``. ``solve(..., from_scalar=True)`` warm-starts
    from category indices. On a LeWM the relaxed one-hot blocks go through its action encoder (the model's action
    width must be action_block * n)."""

    continuous = False

    def __init__(self, model: Any, n_steps: int, batch_size: Optional[int] = None, var_scale: float = 1,
                 num_samples: int = 1, action_noise: float = 0.0, device: Any = "cpu", seed: int = 1234, *,
                 history_pairing: str = "swm", backend: str = "auto") -> None:
        self._setup(model, n_steps, batch_size, var_scale, num_samples, action_noise, device, seed, None,
                    history_pairing, backend)
        self._action_simplex_dim: Optional[int] = None

    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """A Discrete space (``n`` categories) is required (AssertionError otherwise, as there)."""
        assert hasattr(action_space, "n") and not is_box(action_space), (
            f"Action space must be discrete, got {type(action_space)}")
        self._action_space = action_space
        self._n_envs = n_envs
        self._config = config
        self._action_dim = int(np.prod(action_space.shape[1:]))
        self._action_simplex_dim = int(action_space.n)
        self._configured = True
        if self._fast is not None:
            if self.action_simplex_dim != self._fast.lewm.action_dim:
                raise ValueError(f"{self._action_simplex_dim} categories x action_block {config.action_block} = "
                                 f"{self.action_simplex_dim} one-hot values per block, but the model takes "
                                 f"{self._fast.lewm.action_dim}-wide action blocks")
            self._build_fast()

    @property
    def action_simplex_dim(self) -> int:
        """Simplex values per block (n x action_block)."""
        return self._action_simplex_dim * self._cfg().action_block  # type: ignore[operator]

    def init_action(self, actions: Optional[torch.Tensor] = None, from_scalar: bool = False) -> None:
        """``init`` <- samples around ``actions`` (n_envs, t <= horizon, action_simplex_dim), or around the one-hot of
        category indices (n_envs, t, action_block) with ``from_scalar``; zero-padded to the horizon."""
        if actions is None:
            actions = torch.zeros((self._n_envs, 0, self.action_simplex_dim))
        elif from_scalar:
            actions = F.one_hot(actions, num_classes=self._action_simplex_dim).to(torch.float32)
            actions = actions.reshape(*actions.shape[:-2], self.action_simplex_dim)
            assert (actions.shape[0] == self._n_envs and actions.shape[1] <= self.horizon
                    and actions.shape[2] == self.action_simplex_dim)
        remaining = self.horizon - actions.shape[1]
        if remaining > 0:
            pad = torch.zeros(self._n_envs, remaining, self.action_simplex_dim)
            actions = torch.cat([actions, pad], dim=1).to(self.device)
        self._set_init(self._perturb(actions), reuse_any_shape=True)

    def _factor_action_block(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., action_block * n) -> (..., action_block, n)."""
        return actions.reshape(*actions.shape[:-1], self._cfg().action_block, self._action_simplex_dim)

    def _project_action_simplex(self, actions: torch.Tensor) -> torch.Tensor:
        return project_simplex(actions, self._action_simplex_dim)  # type: ignore[arg-type]

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.torch_gen, device=self.device)

    def _top_actions(self, params: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        return self._factor_action_block(best_samples(params, costs)).argmax(dim=-1)

    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None, from_scalar: bool = False) -> dict:
        with torch.no_grad():
            self.init_action(init_action, from_scalar=from_scalar)

        def descend(costs_of: Any, params: torch.Tensor, lo: int, hi: int) -> Tuple[torch.Tensor, torch.Tensor]:
            optimizer = torch.optim.SGD([params], lr=1.0)
            return descend_(params, lambda p: _summed(costs_of(p)), self.n_steps, optimizer, None, self.action_noise,
                            self._noise, project=self._project_action_simplex)

        with torch.inference_mode(False), torch.enable_grad():
            tops, history = self._descend_chunks(info_dict, self.n_envs, descend, "keep", False, "PGD solver")
        return {"cost": history, "actions": torch.cat(tops, dim=0)}


__all__ = ["GradientSolver", "LagrangianSolver", "PGDSolver"]
