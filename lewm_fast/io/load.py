"""``load_model``: the one way in for a trained LeWM, from a lewm-train run directory or checkpoint folder, a
stable-worldmodel folder (``config.json`` + ``weights.pt``) or an object checkpoint file (``<run>_object.ckpt``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..reference.lewm import LeWM
from .build import CheckpointError
from .runs import NORMALIZATION, read_normalization, resolve_checkpoint
from .swm_folder import load_pretrained


@dataclass(frozen=True)
class RunInfo:
    """Where a loaded model came from: ``source`` is the checkpoint folder (a run directory's latest checkpoint) or the
    object checkpoint file; ``normalization`` its ``normalization.json`` (action statistics, env, frameskip, training
    data), None where there is none (stable-worldmodel checkpoints)."""

    source: Path
    normalization: Optional[Dict[str, Any]]


def check_finite_weights(model: nn.Module, source: os.PathLike) -> None:
    """CheckpointError naming the tensors of ``model`` that hold NaN or inf (a run that diverged before saving)."""
    bad = [name for name, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite weights (NaN/inf) in {len(bad)} tensor(s), e.g. {', '.join(bad[:3])}: training "
            "diverged before this checkpoint was saved; evaluate an earlier checkpoint of the run"
        )


def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Tuple[LeWM, RunInfo]:
    """-> (model on ``device`` in eval mode, where it came from). Weights load strictly and must be finite;
    CheckpointError otherwise, or when ``path`` holds no checkpoint."""
    source = resolve_checkpoint(path)
    norm = read_normalization(source) if (source / NORMALIZATION).is_file() else None
    model = load_pretrained(source, map_location=device)
    check_finite_weights(model, source)
    return model, RunInfo(source, norm)
