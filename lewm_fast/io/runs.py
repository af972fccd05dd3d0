"""Run directories: training checkpoints (a stable-worldmodel model folder plus everything needed to resume exactly),
their ``normalization.json``, and resolving a run, checkpoint folder or object file to the checkpoint it means.

Layout of a run directory::

    <run>/checkpoints/step_00000120/   config.json, weights.pt        (LeWM.save_pretrained: loads with from_pretrained)
                                       normalization.json             (action mean/std etc. for planning in the env)
                                       trainer_state.pt               (optimizer, scheduler, step, epoch, RNG, log)

A checkpoint is written into a hidden temporary folder next to its final place and renamed when complete
(``os.replace``), so a run killed while saving leaves either the previous set of checkpoints or the new one, never a
half-written folder under a checkpoint name. Leftover temporary folders are ignored and removed on resume.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..reference.lewm import LeWM
from .build import CheckpointError
from .swm_folder import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
NORMALIZATION = "normalization.json"
_NAME = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(global_step: int) -> str:
    return f"step_{global_step:08d}"


def list_checkpoints(run_dir: Union[str, os.PathLike]) -> List[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are not listed)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial_checkpoints(run_dir: Union[str, os.PathLike]) -> None:
    """Delete temporary folders left by a save that was interrupted."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    run_dir: Union[str, os.PathLike],
    model: LeWM,
    trainer_state: Dict[str, Any],
    normalization: Dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write ``checkpoints/step_<global_step>`` atomically; keep only the ``keep`` newest (0 = all). -> its path."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(int(trainer_state["global_step"]))
    tmp = folder / f"{_TMP_PREFIX}{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_pretrained(model, tmp)
        (tmp / NORMALIZATION).write_text(json.dumps(normalization, indent=2))
        torch.save(trainer_state, tmp / TRAINER_STATE)
        if final.exists():  # the same step saved twice (e.g. a resumed run re-saving): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


_UNREADABLE = (RuntimeError, EOFError, OSError, pickle.UnpicklingError)  # what torch.load raises on a damaged file


def _read_trainer_state(path: Path) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _readable(checkpoint: Path) -> bool:
    """Whether a checkpoint has its weights and a trainer state that loads."""
    if not (checkpoint / WEIGHTS_NAME).is_file():
        return False
    try:
        _read_trainer_state(checkpoint / TRAINER_STATE)
    except _UNREADABLE:
        return False
    return True


def load_trainer_state(checkpoint: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``trainer_state.pt`` of a training checkpoint. CheckpointError when it is missing, or unreadable (truncated
    or corrupt): then the message names the newest earlier checkpoint of the run that reads, to fall back to."""
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {TRAINER_STATE}: it is a model folder, not a training checkpoint")
    try:
        return _read_trainer_state(path)
    except _UNREADABLE as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path} (truncated or corrupt: {reason}); {_fallback_hint(Path(checkpoint))}"
        ) from None


def _fallback_hint(broken: Path) -> str:
    """How to continue from the newest readable checkpoint older than ``broken`` (one of a run's checkpoints)."""
    earlier = [c for c in list_checkpoints(broken.parent.parent) if c.name < broken.name]
    for candidate in reversed(earlier):
        if _readable(candidate):
            return (f"the previous checkpoint {candidate} is complete: move the broken one aside "
                    f"(mv {broken} {broken.parent / ('broken-' + broken.name)}) and resume again to continue from it")
    return "the run has no earlier readable checkpoint: start it again"


def resolve_model_folder(path: Union[str, os.PathLike]) -> Path:
    """A checkpoint folder (``config.json`` + ``weights.pt``) from itself or from a run directory (its latest one)."""
    p = Path(path)
    if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(
            f"{p} is neither a checkpoint folder (config.json + weights.pt) nor a training run directory with "
            f"checkpoints under {CHECKPOINT_DIR}/"
        )
    return latest


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """An object checkpoint file as it is, else ``resolve_model_folder(path)``."""
    p = Path(path)
    return p if p.is_file() else resolve_model_folder(p)


def model_files(checkpoint: Path) -> List[Path]:
    """The files holding a resolved checkpoint's model: the object checkpoint file, else config.json + weights.pt."""
    return [checkpoint] if checkpoint.is_file() else [checkpoint / CONFIG_NAME, checkpoint / WEIGHTS_NAME]


def read_normalization(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``normalization.json`` the trainer wrote next to the model (action statistics, env, frameskip)."""
    path = Path(folder) / NORMALIZATION
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {NORMALIZATION} (the action statistics needed to act in the environment); "
            "it is written by lewm-train next to every checkpoint"
        )
    return json.loads(path.read_text())
