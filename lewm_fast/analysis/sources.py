"""What the analyses read: a model (a checkpoint path or a loaded LeWM) and episodes of an episode file (the frozen
encoder's latents of their frames: ``lewm_fast.data.latents``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import build_model, load_model
from ..reference.lewm import LeWM

ModelSource = LeWM | str | os.PathLike


@dataclass
class Episodes:
    """E episodes of a file at full rate: per episode ``frames`` uint8 (T, S, S, 3), ``action`` float32 (T, A) (NaN
    after the last frame), ``proprio`` float32 (T, P), ``state`` float64 (T, S_dim); ``ids`` their file indices."""

    path: Path
    env: str | None
    ids: list[int]
    frames: list[np.ndarray]
    action: list[np.ndarray]
    proprio: list[np.ndarray]
    state: list[np.ndarray]
    action_stats: tuple[np.ndarray, np.ndarray]  # the file's per env action dimension mean, std

    @property
    def image_size(self) -> int:
        return int(self.frames[0].shape[1])


def random_like(model: LeWM, seed: int = 0) -> LeWM:
    """A freshly initialised LeWM of the same config (the untrained baseline), on the model's device, in eval mode."""
    if model.config is None:
        raise ValueError("the model carries no config (model.config), so no same-size random baseline can be built")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        baseline = build_model(model.config)
    return baseline.to(next(model.parameters()).device).eval()


def load_episodes(path: str | os.PathLike, episodes: int | list[int] | None = None, env: str | None = None,
                  columns: dict[str, str | None] | None = None) -> Episodes:
    """Episodes of an episode file (either layout): all, the first ``episodes`` (an int) or those listed. ``env``
    names the environment of a file that records none."""
    from ..data import read_layout, read_layout_stats
    from ..data.h5format import open_h5
    from ..data.layout import read_episode

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    with open_h5(path) as f:
        layout = read_layout(f, columns=columns, env=env)
        n = layout.num_episodes
        ids = list(range(min(episodes, n))) if isinstance(episodes, int) else list(range(n) if episodes is None else episodes)
        bad = [i for i in ids if not 0 <= i < n]
        if bad or not ids:
            raise ValueError(f"episodes must pick some of the {n} episodes of {path}, got {episodes!r}")
        rows = [read_episode(f, layout, i) for i in ids]
        stats = read_layout_stats(f, layout)
    return Episodes(path, layout.env, ids, *([r[k] for r in rows] for k in ("pixels", "action", "proprio", "state")),
                    action_stats=(np.asarray(stats.action_mean), np.asarray(stats.action_std)))


@dataclass
class Inputs:
    """What an analysis reads: the model (eval mode), its normalization.json (None for a LeWM object or a
    stable-worldmodel checkpoint), the episodes and the environment they were recorded in."""

    model: LeWM
    norm: dict[str, Any] | None
    episodes: Episodes
    env: str


def load_inputs(model: ModelSource, data: str | os.PathLike, episodes: int | list[int] | None, env: str | None,
                device: str | None) -> Inputs:
    """Load the model (in eval mode; a LeWM is moved to ``device`` when given, a path loads there, else on the CPU) and
    the episodes; the env is the one the data records, else ``env``, else the checkpoint's."""
    if isinstance(model, LeWM):
        net, norm = (model if device is None else model.to(device)).eval(), None
    else:
        net, run = load_model(model, device or "cpu")
        norm = run.normalization
    eps = load_episodes(data, episodes, env=env)
    name = eps.env or env or (norm or {}).get("env")
    if name is None:
        raise ValueError(f"{eps.path} records no environment and the checkpoint names none: pass env=<name>")
    return Inputs(net, norm, eps, str(name))
