"""Gradient planning: descend the goal cost with respect to the actions, through the rollout engine's gradient.

``descend_`` is the loop of stable-worldmodel's ``GradientSolver`` (gd.py), shared by ``GradientPlanner``, the
``LagrangianPlanner`` (lagrangian.py), the projected variant for one-hot actions (pgd.py) and the stable-worldmodel
adapter: per step the loss and its backward pass, the optional callback, ``clip_grad_norm_``, the optimizer step,
``action_noise`` and an optional projection.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch

from .._validation import check_positive_int
from ..reference.lewm import LeWM
from .base import LoopBuffers, PhiloxNoise, PlannerBase
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike
from .rollout import RolloutEngine

LossFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]  # params -> (scalar loss, costs (B, N))
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, loss, costs), params still hold their .grad


def descend_(
    params: torch.Tensor,
    loss_fn: LossFn,
    n_steps: int,
    optimizer: torch.optim.Optimizer,
    grad_clip: Optional[float] = None,
    action_noise: float = 0.0,
    noise: Optional[Callable[[torch.Size], torch.Tensor]] = None,
    project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    on_backward: Optional[StepHook] = None,
) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Optimise the leaf ``params`` (B, N, T, A) in place for ``n_steps`` steps of ``optimizer`` on ``loss_fn``.

    Per step (stable-worldmodel's order): ``loss, costs = loss_fn(params)``; ``loss.backward()``; ``on_backward``;
    ``clip_grad_norm_(params, grad_clip)``; step; zero the gradient; ``params += noise(shape) * action_noise``;
    ``params <- project(params)``. -> (the last step's costs (B, N), taken before its update, or None for 0 steps;
    the losses (n_steps,), detached: no host sync).
    """
    losses = []
    costs = None
    for step in range(n_steps):
        loss, costs = loss_fn(params)
        loss.backward()
        if on_backward is not None:
            on_backward(step, loss, costs)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            if action_noise > 0:
                params.add_(noise(params.shape) * action_noise)  # type: ignore[misc]
            if project is not None:
                params.copy_(project(params))
        losses.append(loss.detach())
    return costs, torch.stack(losses) if losses else params.new_zeros(0)


def optimizer_capturable(optimizer_cls: Type[torch.optim.Optimizer], kwargs: Dict[str, Any]) -> bool:
    """Whether a gradient planner's whole loop (forward, backward, optimizer steps) can be captured in one CUDA graph
    with ``optimizer_cls(**kwargs)``: SGD (its only state, the momentum buffers, is device tensors) or a class with a
    ``capturable`` option (Adam, AdamW, RMSprop, ...; the planner turns it on) that ``kwargs`` does not turn off.
    Other classes run eagerly: LBFGS needs a closure, Adagrad / Adafactor keep host-side state."""
    if issubclass(optimizer_cls, torch.optim.SGD):
        return True
    return _has_capturable_option(optimizer_cls) and kwargs.get("capturable", True) is not False


def _has_capturable_option(optimizer_cls: Type[torch.optim.Optimizer]) -> bool:
    return "capturable" in inspect.signature(optimizer_cls.__init__).parameters


def best_samples(params: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """params (B, N, T, A), costs (B, N) -> the sample of lowest cost per env (B, T, A) (``argsort(costs)[:, 0]``,
    as stable-worldmodel's gradient solvers pick it)."""
    top = torch.argsort(costs, dim=1)[:, 0]
    return params[torch.arange(params.shape[0], device=params.device), top]


class GradientPlanner(PlannerBase):
    """Gradient descent on ``num_samples`` action sequences per env (stable-worldmodel's ``GradientSolver``).

    Sample 0 starts at the warm-start mean, the others at mean + ``var_scale`` x N(0, 1); each of ``n_steps`` steps
    runs ``optimizer_cls`` (any ``torch.optim`` class, default SGD with ``optimizer_kwargs={"lr": 1.0}``) on the summed
    goal costs, with ``grad_clip`` (max gradient norm) and ``action_noise`` (std of noise added after each step). The
    plan is the sample whose cost was lowest at the last step, after that step's update (as stable-worldmodel returns
    it). Gradients come from ``RolloutEngine.costs`` (the fused rollout's backward; weights frozen). On CPU the noise
    is ``torch.randn`` from the seeded generator in stable-worldmodel's order (the starting samples, then
    ``action_noise`` after each step), so seeded plans equal its solver's; with Triton each draw has its own Philox key.
    ``action_bounds`` (see ``PlannerBase``): "clip" projects the samples into the bounds after every step (projected
    gradient descent), "penalty" adds the penalty to the descended cost.

    On CUDA with the Triton backend a plan (every step's forward, backward and optimizer step) is captured once per
    input shape in a CUDA graph and replayed, where the optimizer allows it (``optimizer_capturable``: SGD, or a
    class with a ``capturable`` option, which the planner turns on); ``cuda_graph=False`` runs it eagerly.

    Diagnostics per step i: ``elite_costs[i]`` the lowest cost (B, 1), ``mean[i]`` that sample after step i's update,
    ``std[i]`` the spread of the samples (B, T, A).
    """

    def __init__(
        self,
        model: LeWM,
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
        action_bounds: Optional[BoundsLike] = None,
        bounds_mode: str = "clip",
        bounds_weight: float = DEFAULT_PENALTY_WEIGHT,
    ):
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer class, got {optimizer_cls!r}")
        if not action_noise >= 0:
            raise ValueError(f"action_noise must be >= 0, got {action_noise}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be None or > 0, got {grad_clip}")
        super().__init__(
            model, num_samples=num_samples, topk=1, n_steps=n_steps, horizon=horizon, receding_horizon=receding_horizon,
            var_scale=var_scale, backend=backend, dtype=dtype, seed=seed, engine=engine, cuda_graph=cuda_graph,
            precision=precision, action_bounds=action_bounds, bounds_mode=bounds_mode, bounds_weight=bounds_weight,
        )
        self.action_noise = float(action_noise)
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = dict(optimizer_kwargs) if optimizer_kwargs is not None else {"lr": 1.0}
        self.grad_clip = grad_clip

    def _check_settings(self, num_samples: int, topk: int, n_steps: int, horizon: int, receding_horizon: int,
                        var_scale: float) -> None:
        for value, name in ((num_samples, "num_samples"), (n_steps, "n_steps"), (horizon, "horizon"),
                            (receding_horizon, "receding_horizon")):
            check_positive_int(value, name)
        if receding_horizon > horizon:
            raise ValueError(f"receding_horizon ({receding_horizon}) must be <= horizon ({horizon})")
        if not var_scale >= 0:
            raise ValueError(f"var_scale must be >= 0, got {var_scale}")

    def _capturable(self, emb_ctx: torch.Tensor) -> bool:
        """A plan (every step's forward, backward and optimizer step) is one CUDA graph when ``captures`` and the
        optimizer allows it (``optimizer_capturable``); else autograd and the optimizer run eagerly."""
        return self.captures and optimizer_capturable(self.optimizer_cls, self.optimizer_kwargs)

    def _optimizer(self, buf: LoopBuffers, params: torch.Tensor) -> torch.optim.Optimizer:
        """A fresh ``optimizer_cls`` on ``params`` (one per plan, as stable-worldmodel makes one per solve), with
        ``capturable=True`` (its step counters on the device) when the plan is captured and the class has the
        option."""
        kwargs = self.optimizer_kwargs
        if buf.runner is not None and buf.runner.capture and _has_capturable_option(self.optimizer_cls):
            kwargs = {"capturable": True, **kwargs}
        return self.optimizer_cls([params], **kwargs)

    def _initial_samples(self, buf: LoopBuffers) -> torch.Tensor:
        """(B, N, T, A): the warm-start mean, plus var_scale x N(0, 1) on samples 1.. (one draw, as stable-worldmodel
        draws it)."""
        x = buf.cand[0]
        x.copy_(buf.init_mean.unsqueeze(1).expand_as(x))
        if x.shape[1] > 1:
            x[:, 1:] += self._noise(x[:, 1:].shape) * self.var_scale
        return self.clip_(x)

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        """Standard normals of ``shape``: the plan's next draw (its own Philox key with Triton)."""
        self._draws += 1
        return self.noise.normal_(torch.empty(shape, device=self.device), self._draws - 1)

    def _start_plan(self) -> None:
        self._draws = 0

    def _end_plan(self) -> None:
        """Move the Philox key past the keys this plan drew (a CPU generator has simply advanced)."""
        if isinstance(self.noise, PhiloxNoise):
            self.noise.seed_buf.add_(max(self._draws, 1))

    def _loss(self, buf: LoopBuffers) -> LossFn:
        def loss(params: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            costs = self.loop_costs(buf, params)
            return costs.sum(), costs
        return loss

    def _loop(self, buf: LoopBuffers) -> None:
        self._start_plan()
        with torch.inference_mode(False), torch.enable_grad():
            params = self._initial_samples(buf).detach().clone().requires_grad_(True)
            self._descend(buf, params, self._optimizer(buf, params), self._loss(buf), self.n_steps, 0)
        self._end_plan()

    def _descend(self, buf: LoopBuffers, params: torch.Tensor, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 n_steps: int, first: int, project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """``descend_`` for ``n_steps`` steps, recording step ``first + i``'s diagnostics after its update."""
        seen = []

        def tracked(p: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            if seen:  # the previous step's update is done
                self._record(buf, first + len(seen) - 1, p, seen[-1])
            loss, costs = loss_fn(p)
            seen.append(costs.detach())
            return loss, costs

        project = project if project is not None or self.bounds is None else self.clip_
        descend_(params, tracked, n_steps, optimizer, self.grad_clip, self.action_noise, self._noise, project)
        self._record(buf, first + n_steps - 1, params, seen[-1])

    @torch.no_grad()
    def _record(self, buf: LoopBuffers, step: int, params: torch.Tensor, costs: torch.Tensor) -> None:
        buf.means[step].copy_(best_samples(params, costs))
        buf.stds[step].copy_(params.std(1) if params.shape[1] > 1 else torch.zeros_like(buf.stds[step]))
        buf.elite_costs[step].copy_(costs.amin(1, keepdim=True))
