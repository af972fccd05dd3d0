"""stable-worldmodel model folders: ``config.json`` (hydra ``_target_`` config) + ``weights.pt`` (state dict).

Reads them without stable-worldmodel installed, in either transformers ViT key layout (4.x, 5.x), always strictly, and
writes them atomically in the layout asked for, so that stable-worldmodel loads lewm_fast's folders too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import torch

from ..reference.lewm import LeWM
from ..reference.vit import convert_vit_keys
from .build import CheckpointError, build_model, load_state_dict_strict, read_weights
from .object_file import load_object_checkpoint

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"


def load_pretrained(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu", allow_pickle: bool = False) -> LeWM:
    """``LeWM.from_pretrained``: a folder (build from ``config.json``, strictly load ``weights.pt``) or an object checkpoint
    file (``<run>_object.ckpt``, see ``object_file``; no code from it runs); returns the model in eval mode."""
    folder = Path(path)
    if folder.is_file():
        return load_object_checkpoint(folder, map_location=map_location)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist (give a folder with config.json + weights.pt, or an _object.ckpt file)")
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint folder {folder} has no {p.name}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc
    model = build_model(config)
    load_state_dict_strict(model, read_weights(w_path, map_location="cpu", allow_pickle=allow_pickle))
    return model.to(map_location).eval()


def _umask_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (from /proc on Linux, where reading it needs
    no change; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path`` (readers never see a partial
    file). mkstemp creates the temporary file 0600; it gets the usual umask-derived mode before the rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: LeWM, path: Union[str, os.PathLike], encoder_layout: str = "5.x") -> None:
    """Write ``config.json`` and ``weights.pt`` atomically (each to a temp file, then renamed)."""
    if model.config is None:
        raise CheckpointError("model has no config; build it with LeWM.from_config(...) or lewm_fast.build_lewm(...)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = convert_vit_keys({k: v.detach().cpu() for k, v in model.state_dict().items()}, encoder_layout, prefix="encoder.")
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: torch.save(state, tmp))
    text = json.dumps(model.config, indent=2)
    _atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
