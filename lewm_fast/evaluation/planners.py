"""The planners ``lewm-eval`` can build, by ``planner.kind`` (one entry per preset family).

Each entry validates its own ``planner.*`` settings (ValueError naming the key) and builds the planner from the loaded
model and what the evaluation knows about the run (``PlannerInputs``: the run folder, the action codec, the env's
action box). A config without ``planner.kind`` is a CEM config (configs written before the key existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from ..backends import BACKENDS
from ..config import require_bool, require_choice, require_int, require_key, require_number
from ..data import ActionCodec
from ..ops.predictor import PRECISIONS
from ..reference.lewm import LeWM

PLANNER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ACTION_BOUNDS = ("clip", "penalty", "none")


@dataclass(frozen=True)
class PlannerInputs:
    """What a planner may need besides the model and its settings."""

    folder: Path  # the checkpoint's run folder (or file)
    codec: ActionCodec  # env actions <-> the model's normalised action blocks
    action_low: np.ndarray  # (A,) the env's action box, in env units
    action_high: np.ndarray


@dataclass(frozen=True)
class PlannerKind:
    validate: Callable[[DictConfig], None]
    build: Callable[[LeWM, DictConfig, PlannerInputs], Any]


def validate_sampling(cfg: DictConfig, min_steps: int = 1) -> None:
    """The settings every sampling planner shares (CEM's); ``planner.n_steps`` >= ``min_steps``."""
    for key in ("num_samples", "topk", "n_steps", "horizon", "receding_horizon"):
        require_int(cfg, f"planner.{key}", min_steps if key == "n_steps" else 1)
    require_number(cfg, "planner.var_scale", 0.0, open_low=True)
    _validate_rollout_settings(cfg)


def sampling_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """``PlannerBase`` keyword arguments from the shared sampling settings and the eval seed."""
    p = cfg.planner
    return dict(num_samples=int(p.num_samples), topk=int(p.topk), n_steps=int(p.n_steps), var_scale=float(p.var_scale),
                **_rollout_kwargs(cfg))


def bounds_kwargs(cfg: DictConfig, inputs: Optional[PlannerInputs]) -> Dict[str, Any]:
    """``PlannerBase`` keyword arguments of ``planner.action_bounds`` (clip | penalty | none; absent: the default
    ``DEFAULT_ACTION_BOUNDS``) and ``planner.bounds_weight``: the env's action box mapped into the model's normalised
    action-block units by the run's action statistics."""
    from ..planning.bounds import DEFAULT_ACTION_BOUNDS, DEFAULT_PENALTY_WEIGHT, normalized_box

    mode = cfg.planner.get("action_bounds") or DEFAULT_ACTION_BOUNDS
    if mode == "none":
        return {}
    if inputs is None:
        raise ValueError(f"planner.action_bounds={mode} needs the env's action box and the run's action statistics "
                         "(PlannerInputs); pass planner.action_bounds=none to plan without them")
    weight = cfg.planner.get("bounds_weight")
    return dict(action_bounds=normalized_box(inputs.codec, inputs.action_low, inputs.action_high), bounds_mode=mode,
                bounds_weight=DEFAULT_PENALTY_WEIGHT if weight is None else float(weight))


def _build_cem(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.cem import CEMPlanner

    return CEMPlanner(model, **sampling_kwargs(cfg), **bounds_kwargs(cfg, inputs))


def validate_icem(cfg: DictConfig) -> None:
    validate_sampling(cfg)
    require_number(cfg, "planner.noise_beta", 0.0)
    require_number(cfg, "planner.keep_elites", 0.0, 1.0)
    require_number(cfg, "planner.momentum", 0.0, 1.0)


def _build_icem(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.icem import ICEMPlanner

    p = cfg.planner
    return ICEMPlanner(model, **sampling_kwargs(cfg), **bounds_kwargs(cfg, inputs), noise_beta=float(p.noise_beta),
                       keep_elites=float(p.keep_elites), momentum=float(p.momentum))


def validate_mppi(cfg: DictConfig) -> None:
    validate_sampling(cfg)
    require_number(cfg, "planner.temperature", 0.0, open_low=True)
    require_bool(cfg, "planner.elites_only")


def _build_mppi(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.mppi import MPPIPlanner

    p = cfg.planner
    return MPPIPlanner(model, **sampling_kwargs(cfg), **bounds_kwargs(cfg, inputs), temperature=float(p.temperature),
                       elites_only=bool(p.elites_only))


def _validate_idm_path(cfg: DictConfig) -> None:
    """``planner.idm``: the GC-IDM's folder or idm.pt, or null (``<run>/idm``)."""
    idm = require_key(cfg, "planner.idm")
    if idm is not None and not isinstance(idm, str):
        raise ValueError(f"planner.idm must be a path (or null: <run>/idm), got {idm!r}")


def validate_idm(cfg: DictConfig) -> None:
    """``planner=idm``: the GC-IDM policy (``planner.idm``: its folder or idm.pt, null = ``<run>/idm``)."""
    if cfg.get("viewer"):
        raise ValueError("viewer=true draws a sampling planner's candidates and elites; planner=idm samples none "
                         "(planner=idm_cem does)")
    require_int(cfg, "planner.receding_horizon")
    require_choice(cfg, "planner.remaining", ("countdown", "fixed"))
    require_choice(cfg, "planner.backend", BACKENDS)
    _validate_idm_path(cfg)


def validate_idm_cem(cfg: DictConfig) -> None:
    """``planner=idm_cem``: CEM seeded with the GC-IDM's latent rollout; ``planner.n_steps`` may be 0."""
    validate_sampling(cfg, min_steps=0)
    _validate_idm_path(cfg)


def _load_idm(model: LeWM, cfg: DictConfig, inputs: Optional[PlannerInputs]):
    """The GC-IDM of ``planner.idm`` (default: the run's ``idm/``), checked against the model and the env."""
    from ..io.idm import default_idm_dir, load_idm

    if cfg.planner.idm is None and inputs is None:
        raise ValueError("planner.idm=null means <run>/idm, but no run folder is known: pass planner.idm=<folder>")
    path = Path(cfg.planner.idm) if cfg.planner.idm is not None else default_idm_dir(inputs.folder)
    idm, meta = load_idm(path, model, next(model.parameters()).device)
    if inputs is not None and (int(meta["frameskip"]), int(meta["env_action_dim"])) != (
            inputs.codec.frameskip, inputs.codec.action_dim):
        raise ValueError(f"{path} was trained for frameskip {meta['frameskip']} x {meta['env_action_dim']}-d env "
                         f"actions, but this env acts with frameskip {inputs.codec.frameskip} x {inputs.codec.action_dim}")
    return idm


def _build_idm(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.idm import IDMPolicy

    return IDMPolicy(model, _load_idm(model, cfg, inputs), int(cfg.planner.receding_horizon), str(cfg.planner.remaining))


def _build_idm_cem(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.cem import CEMPlanner
    from ..planning.idm import IDMInit

    init = IDMInit(model, _load_idm(model, cfg, inputs), int(cfg.planner.horizon))
    return CEMPlanner(model, **sampling_kwargs(cfg), **bounds_kwargs(cfg, inputs), init=init)


def _validate_rollout_settings(cfg: DictConfig) -> None:
    """backend / precision / dtype / action bounds, as the sampling planners take them."""
    require_choice(cfg, "planner.backend", BACKENDS)
    require_choice(cfg, "planner.precision", PRECISIONS)
    if require_key(cfg, "planner.dtype") is not None:
        require_choice(cfg, "planner.dtype", tuple(PLANNER_DTYPES))
    if cfg.planner.get("action_bounds") is not None:
        require_choice(cfg, "planner.action_bounds", ACTION_BOUNDS)
    if cfg.planner.get("bounds_weight") is not None:
        require_number(cfg, "planner.bounds_weight", 0.0)


def _rollout_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    p = cfg.planner
    return dict(horizon=int(p.horizon), receding_horizon=int(p.receding_horizon), backend=str(p.backend),
                dtype=PLANNER_DTYPES[p.dtype] if p.dtype is not None else None, seed=int(cfg.seed),
                precision=str(p.precision))


def _optimizer_class(name: Any) -> type:
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"planner.optimizer must name a torch.optim optimizer class (SGD, Adam, AdamW, ...), got "
                         f"{name!r}")
    return cls


def validate_gradient(cfg: DictConfig, grad_clip: bool = True) -> None:
    """``planner=gd`` (and, without ``grad_clip``, the shared part of ``lagrangian``): gradient descent on the
    actions."""
    for key in ("num_samples", "n_steps", "horizon", "receding_horizon"):
        require_int(cfg, f"planner.{key}")
    require_number(cfg, "planner.var_scale", 0.0)
    require_number(cfg, "planner.action_noise", 0.0)
    require_number(cfg, "planner.lr", 0.0, open_low=True)
    _optimizer_class(require_key(cfg, "planner.optimizer"))
    if grad_clip and require_key(cfg, "planner.grad_clip") is not None:
        require_number(cfg, "planner.grad_clip", 0.0, open_low=True)
    _validate_rollout_settings(cfg)


def _gradient_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    p = cfg.planner
    return dict(num_samples=int(p.num_samples), n_steps=int(p.n_steps), var_scale=float(p.var_scale),
                action_noise=float(p.action_noise), optimizer_cls=_optimizer_class(p.optimizer),
                optimizer_kwargs={"lr": float(p.lr)}, **_rollout_kwargs(cfg))


def _build_gd(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.gradient import GradientPlanner

    grad_clip = cfg.planner.grad_clip
    return GradientPlanner(model, **_gradient_kwargs(cfg), grad_clip=None if grad_clip is None else float(grad_clip),
                           **bounds_kwargs(cfg, inputs))


def validate_lagrangian(cfg: DictConfig) -> None:
    """``planner=lagrangian``: augmented-Lagrangian descent; ``planner.constraints``: action_box | null."""
    validate_gradient(cfg, grad_clip=False)
    if cfg.planner.get("grad_clip") is not None:
        raise ValueError("planner.grad_clip is not an option of the Lagrangian planner (stable-worldmodel's has none)")
    require_int(cfg, "planner.n_outer_steps")
    require_number(cfg, "planner.rho_init", 0.0)
    require_number(cfg, "planner.rho_max", 0.0)
    require_number(cfg, "planner.rho_scale", 1.0)
    if require_key(cfg, "planner.constraints") is not None:
        require_choice(cfg, "planner.constraints", ("action_box",))


def _build_lagrangian(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.bounds import normalized_box
    from ..planning.lagrangian import LagrangianPlanner, box_constraints

    p = cfg.planner
    constraints = None
    if p.constraints == "action_box":
        if inputs is None:
            raise ValueError("planner.constraints=action_box needs the env's action box and the run's action "
                             "statistics (PlannerInputs); pass planner.constraints=null")
        low, high = (torch.as_tensor(x, dtype=torch.float32, device=next(model.parameters()).device)
                     for x in normalized_box(inputs.codec, inputs.action_low, inputs.action_high))
        constraints = box_constraints(low, high)
    kwargs = _gradient_kwargs(cfg)
    return LagrangianPlanner(model, **kwargs, n_outer_steps=int(p.n_outer_steps), constraints=constraints,
                             rho_init=float(p.rho_init), rho_max=float(p.rho_max), rho_scale=float(p.rho_scale),
                             **bounds_kwargs(cfg, inputs))


def validate_predictive_sampling(cfg: DictConfig) -> None:
    """``planner=predictive_sampling``: one round of samples around the warm start per plan."""
    for key in ("num_samples", "horizon", "receding_horizon"):
        require_int(cfg, f"planner.{key}")
    require_number(cfg, "planner.noise_scale", 0.0, open_low=True)
    _validate_rollout_settings(cfg)


def _build_predictive_sampling(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.predictive_sampling import PredictiveSamplingPlanner

    p = cfg.planner
    return PredictiveSamplingPlanner(model, num_samples=int(p.num_samples), noise_scale=float(p.noise_scale),
                                     **_rollout_kwargs(cfg), **bounds_kwargs(cfg, inputs))


def _validate_discrete(cfg: DictConfig) -> None:
    """What both discrete planners share: ``planner.bins`` (values per action entry, >= 2) and no action bounds (the
    discrete set spans the env's action box)."""
    require_int(cfg, "planner.bins", 2)
    if cfg.planner.get("action_bounds") not in (None, "none"):
        raise ValueError(f"planner.action_bounds={cfg.planner.action_bounds} does not apply to planner.kind="
                         f"{cfg.planner.kind}: its {cfg.planner.bins} values per action entry span the env's action "
                         "box")


def _action_grid_box(inputs: Optional[PlannerInputs], kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """The env's action box in the model's normalised units: what the discrete planners' values span."""
    from ..planning.bounds import normalized_box

    if inputs is None:
        raise ValueError(f"planner.kind={kind} plans over values spanning the env's action box: it needs the box and "
                         "the run's action statistics (PlannerInputs)")
    return normalized_box(inputs.codec, inputs.action_low, inputs.action_high)


def validate_pgd(cfg: DictConfig) -> None:
    """``planner=pgd``: projected gradient descent on the simplex of a discrete action set."""
    validate_gradient(cfg)
    _validate_discrete(cfg)


def _build_pgd(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.pgd import PGDPlanner

    grad_clip = cfg.planner.grad_clip
    return PGDPlanner(model, _action_grid_box(inputs, "pgd"), bins=int(cfg.planner.bins), **_gradient_kwargs(cfg),
                      grad_clip=None if grad_clip is None else float(grad_clip))


def validate_categorical_cem(cfg: DictConfig) -> None:
    """``planner=categorical_cem``: CEM over categorical distributions on a discrete action set."""
    for key in ("num_samples", "topk", "n_steps", "horizon", "receding_horizon"):
        require_int(cfg, f"planner.{key}")
    if cfg.planner.topk > cfg.planner.num_samples:
        raise ValueError(f"planner.topk ({cfg.planner.topk}) must be <= planner.num_samples "
                         f"({cfg.planner.num_samples})")
    require_number(cfg, "planner.smoothing", 0.0)
    require_number(cfg, "planner.alpha", 0.0, 1.0)
    if cfg.planner.alpha == 1:
        raise ValueError("planner.alpha must be < 1 (alpha 1 never moves the distribution), got 1")
    _validate_discrete(cfg)
    _validate_rollout_settings(cfg)


def _build_categorical_cem(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.categorical_cem import CategoricalCEMPlanner

    p = cfg.planner
    return CategoricalCEMPlanner(model, _action_grid_box(inputs, "categorical_cem"), bins=int(p.bins),
                                 num_samples=int(p.num_samples), topk=int(p.topk), n_steps=int(p.n_steps),
                                 smoothing=float(p.smoothing), alpha=float(p.alpha), **_rollout_kwargs(cfg))


PLANNERS: Dict[str, PlannerKind] = {
    "cem": PlannerKind(validate_sampling, _build_cem),
    "icem": PlannerKind(validate_icem, _build_icem),
    "mppi": PlannerKind(validate_mppi, _build_mppi),
    "idm": PlannerKind(validate_idm, _build_idm),
    "idm_cem": PlannerKind(validate_idm_cem, _build_idm_cem),
    "gd": PlannerKind(validate_gradient, _build_gd),
    "lagrangian": PlannerKind(validate_lagrangian, _build_lagrangian),
    "predictive_sampling": PlannerKind(validate_predictive_sampling, _build_predictive_sampling),
    "pgd": PlannerKind(validate_pgd, _build_pgd),
    "categorical_cem": PlannerKind(validate_categorical_cem, _build_categorical_cem),
}


def planner_kind(cfg: DictConfig) -> Tuple[str, PlannerKind]:
    """(name, entry) of ``cfg.planner.kind`` (default ``cem``); ValueError for an unknown kind."""
    name = cfg.planner.get("kind", "cem") if isinstance(cfg.planner, DictConfig) else None
    if name not in PLANNERS:
        raise ValueError(f"planner.kind must be one of {sorted(PLANNERS)}, got {name!r}")
    return str(name), PLANNERS[str(name)]


def validate_planner_config(cfg: DictConfig) -> None:
    """ValueError naming the key for a bad ``planner.*`` setting."""
    if not isinstance(require_key(cfg, "planner"), DictConfig):
        raise ValueError(f"planner must be a mapping of planner settings, got {cfg.planner!r}")
    planner_kind(cfg)[1].validate(cfg)


def build_planner(model: LeWM, cfg: DictConfig, inputs: Optional[PlannerInputs] = None):
    """The planner ``cfg.planner`` describes, for ``model``."""
    return planner_kind(cfg)[1].build(model, cfg, inputs)
