"""GC-IDM checkpoints (``lewm-train-idm``): ``<run>/idm/idm.pt``, tied to the frozen world model they were trained on
by a hash of its weights.

One file holds the IDM's constructor arguments and weights, ``meta`` (env, frameskip, env action width, K, goal
offset, per-epoch losses) and, for resuming, the optimiser state and the epoch. It is written to a temporary file and
renamed (``os.replace``), so an interrupted save leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..reference.idm import GCIDM
from .build import CheckpointError
from .runs import CHECKPOINT_DIR

IDM_DIR = "idm"
IDM_FILE = "idm.pt"
FORMAT = "lewm-gc-idm-1"


def weights_hash(model: nn.Module) -> str:
    """sha256 (hex) of a model's state dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def default_idm_dir(source: Union[str, os.PathLike]) -> Path:
    """Where the IDM of a resolved checkpoint lives: ``<run>/idm`` for a checkpoint ``<run>/checkpoints/step_*``,
    else ``<folder>/idm`` (a model folder; beside the file for an object checkpoint)."""
    p = Path(source)
    if p.is_file():
        return p.parent / IDM_DIR
    if p.parent.name == CHECKPOINT_DIR:
        return p.parent.parent / IDM_DIR
    return p / IDM_DIR


def idm_file(path: Union[str, os.PathLike]) -> Path:
    """``path`` itself when it is a file, else ``path/idm.pt``."""
    p = Path(path)
    return p if p.is_file() or p.suffix == ".pt" else p / IDM_FILE


def save_idm(path: Union[str, os.PathLike], idm: GCIDM, model_hash: str, meta: Dict[str, Any],
             train_state: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``idm.pt`` (into the folder ``path``, or as the file ``path``); -> the file."""
    target = idm_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": idm.config(), "state_dict": idm.state_dict(), "model_hash": model_hash,
               "meta": meta, "train_state": train_state}
    tmp = target.with_name(f".tmp-{target.name}")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def read_idm_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The raw checkpoint dict; CheckpointError when it is missing or not a GC-IDM checkpoint."""
    f = idm_file(path)
    if not f.is_file():
        raise CheckpointError(f"no GC-IDM checkpoint at {f} (train one with lewm-train-idm checkpoint=<run>)")
    try:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise CheckpointError(f"{f} is not a readable GC-IDM checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{f} is not a GC-IDM checkpoint (format {FORMAT!r})")
    return payload


def load_idm(path: Union[str, os.PathLike], model: Optional[nn.Module] = None,
             device: Union[str, torch.device] = "cpu") -> Tuple[GCIDM, Dict[str, Any]]:
    """-> (IDM in eval mode on ``device``, meta). With ``model``, CheckpointError unless the IDM was trained on
    exactly these weights (``weights_hash``)."""
    payload = read_idm_file(path)
    if model is not None and payload["model_hash"] != weights_hash(model):
        raise CheckpointError(
            f"{idm_file(path)} was trained on another world model (weights hash {payload['model_hash'][:12]}..., this "
            f"model's is {weights_hash(model)[:12]}...): train an IDM for this checkpoint with lewm-train-idm"
        )
    idm = GCIDM(**payload["config"])
    idm.load_state_dict(payload["state_dict"])
    return idm.to(device).eval(), dict(payload["meta"])
