"""lewm_fast: a fast, faithful LeWorldModel (LeWM) — reference oracle, Triton kernels, C++ CPU paths."""

from __future__ import annotations

import warnings
from typing import Any

from ._version import __version__
from .backends import csrc_available, describe, resolve_backend
from .io import CheckpointError, build_model, default_config
from .ops.sigreg import SIGReg
from .planning import CEMPlanner, ICEMPlanner, MPPIPlanner, RolloutEngine, accelerate
from .precompile import WarmupReport, warmup
from .reference import LeWM, preprocess_frames


if not csrc_available():
    warnings.warn(
        "lewm_fast._C (the C++ CPU extension) is not built: CPU ops use the 'reference' backend. "
        "Reinstall with the README's install command to build it; `lewm-fast info` lists the backends.",
        RuntimeWarning,
        stacklevel=2,
    )


def build_lewm(action_dim: int = 2, **kwargs: Any) -> LeWM:
    """A freshly initialised LeWM (paper "tiny" sizes unless overridden; see ``default_config``)."""
    return build_model(default_config(action_dim=action_dim, **kwargs))


__all__ = [
    "CEMPlanner", "CheckpointError", "ICEMPlanner", "LeWM", "MPPIPlanner", "RolloutEngine", "SIGReg", "accelerate", "build_lewm", "build_model", "csrc_available", "default_config", "describe",
    "preprocess_frames", "resolve_backend", "warmup", "WarmupReport",
]
