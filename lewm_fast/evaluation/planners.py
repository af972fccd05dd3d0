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
from ..config import require_choice, require_int, require_key, require_number
from ..data import ActionCodec
from ..ops.predictor import PRECISIONS
from ..reference.lewm import LeWM

PLANNER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def validate_sampling(cfg: DictConfig) -> None:
    """The settings every sampling planner shares (CEM's)."""
    for key in ("num_samples", "topk", "n_steps", "horizon", "receding_horizon"):
        require_int(cfg, f"planner.{key}")
    require_number(cfg, "planner.var_scale", 0.0, open_low=True)
    require_choice(cfg, "planner.backend", BACKENDS)
    require_choice(cfg, "planner.precision", PRECISIONS)
    if require_key(cfg, "planner.dtype") is not None:
        require_choice(cfg, "planner.dtype", tuple(PLANNER_DTYPES))


def sampling_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """``PlannerBase`` keyword arguments from the shared sampling settings and the eval seed."""
    p = cfg.planner
    return dict(num_samples=int(p.num_samples), topk=int(p.topk), n_steps=int(p.n_steps), horizon=int(p.horizon),
                receding_horizon=int(p.receding_horizon), var_scale=float(p.var_scale), backend=str(p.backend),
                dtype=PLANNER_DTYPES[p.dtype] if p.dtype is not None else None, seed=int(cfg.seed),
                precision=str(p.precision))


def _build_cem(model: LeWM, cfg: DictConfig, inputs: PlannerInputs):
    from ..planning.cem import CEMPlanner

    return CEMPlanner(model, **sampling_kwargs(cfg))


PLANNERS: Dict[str, PlannerKind] = {
    "cem": PlannerKind(validate_sampling, _build_cem),
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
