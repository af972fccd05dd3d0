"""What every adapter solver shares: stable-worldmodel's ``Solver`` protocol state, its info-dict expansion and
warm start, and the LeWM fast path (encoding the info dict once per chunk of envs, costs from the rollout engine)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..._validation import check_positive_int, check_tensor
from ...planning import RolloutEngine, accelerate
from ...planning.bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike, make_bounds
from ...reference.lewm import LeWM

log = logging.getLogger("lewm_fast.integrations.stable_worldmodel")

HISTORY_PAIRINGS = ("swm", "executed")
_LEWM_PARTS = ("encoder", "predictor", "action_encoder", "pred_proj")

CostFn = Callable[[torch.Tensor], torch.Tensor]  # candidates (B, N, T, A) -> costs (B, N)


def is_lewm(model: Any) -> bool:
    """Whether ``model`` is a LeWM (lewm_fast's, or stable-worldmodel's: the submodules of that structure), which the
    solvers plan on the fused engine; any other ``Costable`` is planned through its own ``get_cost``."""
    return isinstance(model, LeWM) or (
        isinstance(model, nn.Module) and all(isinstance(getattr(model, n, None), nn.Module) for n in _LEWM_PARTS))


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's first parameter, float32 for a model without any (as stable-worldmodel reads it)."""
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32


def is_box(space: Any) -> bool:
    """A continuous (Box-like) action space: one with ``low`` and ``high``."""
    return hasattr(space, "low") and hasattr(space, "high")


def prepare_init_action(model: Any, info_dict: dict, init_action: Optional[torch.Tensor], horizon: int, n_envs: int,
                        action_dim: int) -> Optional[torch.Tensor]:
    """stable-worldmodel's warm start (``solver/utils.py``): ``init_action`` (n_envs, t <= horizon, A) extended to the
    horizon by ``model.get_action(info_dict, horizon=remaining, prefix_actions=init_action)`` when the model has one
    (its ``Actionable`` protocol), else by zeros."""
    if init_action is not None:
        assert init_action.shape[0] == n_envs, f"init_action batch size {init_action.shape[0]} != n_envs {n_envs}"
        assert init_action.shape[2] == action_dim, (
            f"init_action action_dim {init_action.shape[2]} != action_dim {action_dim}")
    remaining = horizon - (init_action.shape[1] if init_action is not None else 0)
    if remaining <= 0:
        return init_action
    if not callable(getattr(model, "get_action", None)):
        device = init_action.device if init_action is not None else "cpu"
        tail = torch.zeros(n_envs, remaining, action_dim, device=device)
        return tail if init_action is None else torch.cat([init_action, tail], dim=1)
    with torch.no_grad():
        tail = model.get_action(info_dict, horizon=remaining, prefix_actions=init_action)
    return tail if init_action is None else torch.cat([init_action.to(tail.device), tail], dim=1)


def expand_info(info_dict: dict, lo: int, hi: int, num_samples: int, device: Any, dtype: Optional[torch.dtype],
                others: str = "slice") -> dict:
    """Envs ``lo:hi`` of ``info_dict`` with a sample axis: tensors (moved to ``device``, floating ones cast to
    ``dtype`` unless None) and arrays repeated ``num_samples`` times at axis 1; other values sliced
    (``others="slice"``) or passed unchanged (``"keep"``), as each stable-worldmodel solver does."""
    out = {}
    bs = hi - lo
    for k, v in info_dict.items():
        if torch.is_tensor(v):
            part = v[lo:hi]
            part = part.to(device=device, dtype=dtype if (dtype is not None and part.is_floating_point()) else None)
            out[k] = part.unsqueeze(1).expand(bs, num_samples, *part.shape[1:])
        elif isinstance(v, np.ndarray):
            out[k] = np.repeat(v[lo:hi][:, None, ...], num_samples, axis=1)
        else:
            out[k] = v[lo:hi] if others == "slice" else v
    return out


def env_slice(info_dict: dict, lo: int, hi: int) -> dict:
    """Envs ``lo:hi`` of the tensors of ``info_dict``; other values as they are."""
    return {k: v[lo:hi] if torch.is_tensor(v) else v for k, v in info_dict.items()}


def plan_costs(cost_fn: CostFn, plan: torch.Tensor) -> list:
    """The cost of one plan (B, T, A) per env -> B floats."""
    return cost_fn(plan.unsqueeze(1))[:, 0].cpu().tolist()


def check_costs(costs: Any, bs: int, num_samples: int, grad: Optional[str] = None) -> torch.Tensor:
    """stable-worldmodel's assertions on what ``get_cost`` returned (AssertionError, as there)."""
    assert isinstance(costs, torch.Tensor), f"Expected cost to be a torch.Tensor, got {type(costs)}"
    assert costs.ndim == 2 and costs.shape[0] == bs and costs.shape[1] == num_samples, (
        f"Expected cost to be of shape ({bs}, {num_samples}), got {costs.shape}")
    if grad is not None:
        assert costs.requires_grad, f"Cost must requires_grad for {grad}."
    return costs


class _Fast:
    """The fused side of a solver whose model is a LeWM: lewm_fast's tensor API over its modules and an engine."""

    def __init__(self, model: nn.Module, device: Any, backend: str):
        self.lewm = model if isinstance(model, LeWM) else accelerate(model)
        model_device = next(self.lewm.predictor.parameters()).device
        device = torch.device(device)
        if model_device.type != device.type or (device.index is not None and model_device != device):
            raise ValueError(f"device={str(device)!r} but the model is on {model_device}: move the model or pass its "
                             "device")
        self.device = model_device
        self.backend = backend
        self.engine: Optional[RolloutEngine] = None  # set by configure (the planner's, or its own)


class SolverBase:
    """stable-worldmodel's ``Solver`` protocol (``configure``, ``n_envs``, ``action_dim``, ``horizon``, ``dtype``,
    ``__call__``) with its attributes: every constructor argument, ``torch_gen`` (its seeded generator),
    ``_configured``, ``_action_space``, ``_n_envs``, ``_config``, ``_action_dim``. Before ``configure`` the properties
    raise AttributeError as its solvers' do, so ``isinstance(solver, Solver)`` (a runtime-checkable protocol) is
    False. ``action_bounds=(low, high)`` (lewm_fast's option, off by default for parity; the model's units, one value
    per block entry) clips candidates / descended samples into the box (``bounds_mode="clip"``) or adds
    ``bounds_weight`` x the squared excess to the costs (``"penalty"``), as ``PlannerBase``'s option."""

    continuous = True  # False: the solver plans one-hot actions of a Discrete space

    def _init_common(self, model: Any, device: Any, seed: int, callbacks: Optional[List[Any]], history_pairing: str,
                     backend: str, action_bounds: Optional[BoundsLike] = None, bounds_mode: str = "clip",
                     bounds_weight: float = DEFAULT_PENALTY_WEIGHT) -> None:
        if history_pairing not in HISTORY_PAIRINGS:
            raise ValueError(f"history_pairing must be one of {HISTORY_PAIRINGS}, got {history_pairing!r}")
        self._fast = _Fast(model, device, backend) if is_lewm(model) else None
        self.model = model
        self.device = device
        self.seed = seed
        self.torch_gen = torch.Generator(device=device).manual_seed(seed)
        self.callbacks = list(callbacks) if callbacks else []
        self.history_pairing = history_pairing
        self.backend = backend
        self.action_bounds, self.bounds_mode, self.bounds_weight = action_bounds, bounds_mode, bounds_weight
        self._bounds = make_bounds(None, 1, torch.device("cpu"), bounds_mode, bounds_weight)  # checks mode and weight
        self._dtype = model_dtype(model)

    @property
    def lewm(self) -> Optional[LeWM]:
        """lewm_fast's LeWM over the model's modules (shared parameters) when the model is a LeWM, else None."""
        return None if self._fast is None else self._fast.lewm

    # ------------------------------------------------------------------ protocol
    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """Read the env's (batched) action space and the ``PlanConfig`` (``horizon``, ``action_block``). A space that
        is not a Box is logged as a warning (stable-worldmodel's); on a LeWM the flattened action block must be the
        model's action width."""
        self._action_space = action_space
        self._n_envs = n_envs
        self._config = config
        self._action_dim = int(np.prod(action_space.shape[1:]))
        self._configured = True
        if not is_box(action_space):
            log.warning(f"Action space is discrete, got {type(action_space)}. {type(self).__name__} may not work as "
                        "expected.")
        device = self._fast.device if self._fast is not None else torch.device(self.device)
        self._bounds = make_bounds(self.action_bounds, self.action_dim, device, self.bounds_mode, self.bounds_weight)
        if self._fast is not None:
            width = self._model_width()
            if width != self._fast.lewm.action_dim:
                raise ValueError(f"the env's actions x action_block {config.action_block} = {width} values per block, "
                                 f"but the model takes {self._fast.lewm.action_dim}-wide action blocks")
            self._build_fast()

    def _model_width(self) -> int:
        """Width of the action blocks this solver hands the model."""
        return self._action_dim * self._config.action_block

    def _build_fast(self) -> None:
        """After configure, on a LeWM: the engine (and planner) the fast path uses."""
        self._fast.engine = RolloutEngine(self._fast.lewm, backend=self.backend)  # type: ignore[union-attr]

    def _unconfigured(self) -> AttributeError:
        return AttributeError(f"{type(self).__name__} is not configured: call configure(action_space=, n_envs=, "
                              "config=) first (WorldModelPolicy.set_env does)")

    def _cfg(self) -> Any:
        config = self.__dict__.get("_config")
        if config is None:
            raise self._unconfigured()
        return config

    @property
    def n_envs(self) -> int:
        """Number of parallel environments."""
        if "_n_envs" not in self.__dict__:
            raise self._unconfigured()
        return self._n_envs

    @property
    def action_dim(self) -> int:
        """Flattened action dimension including action_block grouping."""
        return self._action_dim * self._cfg().action_block

    @property
    def horizon(self) -> int:
        """Planning horizon in timesteps."""
        return self._cfg().horizon

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        """Make solver callable, forwarding to solve()."""
        return self.solve(*args, **kwargs)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ costs
    def _cost_fn(self, info_dict: dict, lo: int, hi: int, num_samples: int, others: str = "slice",
                 copy: bool = False) -> Tuple[CostFn, dict]:
        """Costs of candidates (hi-lo, N, T, A) for envs lo:hi -> (function, the expanded info dict). Any Costable:
        its ``get_cost`` on the info dict expanded as stable-worldmodel expands it (``copy``: a shallow copy per call,
        as its Lagrangian solver passes). A LeWM: the context and goal encoded once, costs from the rollout engine
        (differentiable with respect to the candidates when they require grad)."""
        fn, expanded = self._model_cost_fn(info_dict, lo, hi, num_samples, others, copy)
        bounds = self.__dict__.get("_bounds")
        if bounds is None or bounds.mode != "penalty":
            return fn, expanded
        return (lambda c: bounds.add_penalty(fn(c), c)), expanded

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """With ``action_bounds`` in clip mode: ``x`` (..., A) clamped into them in place; else ``x``."""
        bounds = self.__dict__.get("_bounds")
        return x if bounds is None else bounds.clip_(x)

    def _model_cost_fn(self, info_dict: dict, lo: int, hi: int, num_samples: int, others: str,
                       copy: bool) -> Tuple[CostFn, dict]:
        if self._fast is None:
            dtype = None if others == "keep" else self.dtype
            expanded = expand_info(info_dict, lo, hi, num_samples, self.device, dtype, others)
            return (lambda c: self.model.get_cost(expanded.copy() if copy else expanded, c)), expanded
        sub = env_slice(info_dict, lo, hi)
        return self._latent_cost_fn(*self._encode(sub)), sub

    def _encode(self, info_dict: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """A LeWM's context latents (B,H,D), goal latent (B,D) and executed action history (B,H-1,A) or None (see
        ``_history``) for the envs of ``info_dict``."""
        pixels, goal = self._frames(info_dict)
        with torch.no_grad():
            emb_ctx = self._fast.lewm.encode(pixels)  # type: ignore[union-attr]
            goal_emb = self._fast.lewm.encode(goal)[:, 0]  # type: ignore[union-attr]
        return emb_ctx, goal_emb, self._history(info_dict, emb_ctx.shape[0], emb_ctx.shape[1])

    def _latent_cost_fn(self, emb_ctx: torch.Tensor, goal_emb: torch.Tensor, history: Optional[torch.Tensor]) -> CostFn:
        """The engine's costs of candidates (B, N, T, A) from encoded envs, under ``history_pairing``."""
        engine = self._fast.engine  # type: ignore[union-attr]

        def costs(cand: torch.Tensor) -> torch.Tensor:
            cand = cand if cand.dtype == torch.float32 else cand.float()
            if history is None:
                return engine.paired_costs(emb_ctx, goal_emb, cand)  # type: ignore[union-attr]
            return engine.costs(emb_ctx, history, goal_emb, cand)  # type: ignore[union-attr]

        return costs

    def _frames(self, info_dict: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> context pixels (B,H,3,h,w) and the goal's last frame (B,1,3,h,w), float32 on the model's device."""
        if not isinstance(info_dict, dict):
            raise TypeError(f"info_dict must be a dict, got {type(info_dict).__name__}")
        out = []
        for key in ("pixels", "goal"):
            if key not in info_dict:
                raise KeyError(f"info_dict has no {key!r} (keys: {sorted(info_dict)}); WorldModelPolicy passes the "
                               "env's pixels and goal after its image transform")
            value = info_dict[key]
            if isinstance(value, np.ndarray):
                raise TypeError(f"info_dict[{key!r}] is a numpy array {value.shape}: give WorldModelPolicy an image "
                                f"transform for {key!r} so the solver gets normalised (B, T, 3, h, w) tensors")
            check_tensor(value, f"info_dict[{key!r}]", ndim=5, floating=False)
            if value.shape[2] != 3:
                raise ValueError(f"info_dict[{key!r}] must be (B, T, 3, h, w) channel-first frames, got "
                                 f"{tuple(value.shape)}")
            out.append(value.to(self._fast.device, torch.float32))  # type: ignore[union-attr]
        pixels, goal = out
        if goal.shape[0] != pixels.shape[0]:
            raise ValueError(f"info_dict['goal'] has {goal.shape[0]} envs but info_dict['pixels'] has "
                             f"{pixels.shape[0]}")
        if self.history_pairing == "swm" and pixels.shape[1] > 1 and self.__dict__.get("_idm_net") is not None:
            raise ValueError(f"the IDM's rollout from {pixels.shape[1]} context frames needs the actions executed "
                             "between them: history_pairing='executed' (and info_dict['action']), or one context frame")
        if self.history_pairing == "swm" and pixels.shape[1] > self.horizon:
            raise ValueError(f"history_pairing='swm' pairs the {pixels.shape[1]} context frames with candidate blocks, "
                             f"so the horizon ({self.horizon}) must be at least the history length")
        return pixels, goal[:, -1:]

    def _history(self, info_dict: Dict[str, Any], b: int, h: int) -> Optional[torch.Tensor]:
        """``history_pairing="executed"``: the executed blocks paired with context frames 0..H-2, (B, H-1, A)."""
        if self.history_pairing == "swm" or h == 1:
            return None
        a = self._fast.lewm.action_dim  # type: ignore[union-attr]
        action = info_dict.get("action")
        if not isinstance(action, torch.Tensor) or action.ndim != 3 or action.shape[0] != b or action.shape[1] < h - 1 \
                or action.shape[2] != a:
            shown = tuple(action.shape) if isinstance(action, (torch.Tensor, np.ndarray)) else type(action).__name__
            raise ValueError(
                f"history_pairing='executed' needs info_dict['action'] as a (B={b}, >={h - 1}, {a}) tensor of the "
                f"action blocks executed after the first {h - 1} context frames (normalised like the model's actions), "
                f"got {shown}; history_pairing='swm' needs no action history"
            )
        return action[:, : h - 1].to(self._fast.device, torch.float32)  # type: ignore[union-attr]

    def get_cost(self, info_dict: Dict[str, Any], candidates: torch.Tensor) -> torch.Tensor:
        """Costs (B, N) of candidates (B, N, horizon, action_dim) for the B envs of ``info_dict``: the model's
        ``get_cost`` on the expanded dict, or on a LeWM the engine's under this solver's ``history_pairing``
        (``"swm"``: what stable-worldmodel's ``LeWM.get_cost`` computes on the same inputs)."""
        self._cfg()
        b = len(next(iter(info_dict.values())))
        if self._fast is not None:
            check_tensor(candidates, "candidates", ndim=4, last_dim=self._fast.lewm.action_dim)
            if candidates.shape[0] != b:
                raise ValueError(f"candidates must have shape (B={b}, N, T, {self._fast.lewm.action_dim}), got "
                                 f"{tuple(candidates.shape)}")
            candidates = candidates.to(self._fast.device, torch.float32)
        fn, _ = self._cost_fn(info_dict, 0, b, candidates.shape[1])
        return fn(candidates)

    # ------------------------------------------------------------------ callbacks
    def _cb_reset(self) -> None:
        for cb in self.callbacks:
            cb.reset()

    def _cb_start_batch(self) -> None:
        for cb in self.callbacks:
            cb.start_batch()

    def _cb_step(self, **state: Any) -> None:
        for cb in self.callbacks:
            cb(**state)

    def _cb_finish(self, outputs: dict) -> dict:
        """``outputs['callbacks']``: each callback's history by its ``output_key`` (only when there are callbacks)."""
        if self.callbacks:
            outputs["callbacks"] = {}
            for cb in self.callbacks:
                cb.end_solve()
                outputs["callbacks"][cb.output_key] = cb.history
        return outputs


def check_batch_size(batch_size: Optional[int], allow_none: bool) -> None:
    if batch_size is None and allow_none:
        return
    check_positive_int(batch_size, "batch_size")
