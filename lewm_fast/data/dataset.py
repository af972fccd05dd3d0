"""Training sequences from an episode file (lewm_fast's or stable-worldmodel's layout): ``num_frames`` frames
``frameskip`` steps apart, with action blocks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..envs.base import check_image_size
from ..reference import preprocess_frames
from .actions import ActionCodec
from .h5format import EpisodeReadError, Stats, open_h5
from .layout import EpisodeLayout, read_layout, read_layout_stats, read_rows


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames (N, S, S, 3) -> uint8 (N, size, size, 3): antialiased bilinear, rounded to uint8 levels (unchanged
    when S == size)."""
    if frames.shape[1] == size:
        return frames
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class SequenceDataset(Dataset):
    """Sequences of ``num_frames`` frames, frame j being env step ``start + j * frameskip`` of one episode.

    Reads lewm_fast episode files (``lewm-collect``) and stable-worldmodel HDF5 files (``ep_len`` / ``ep_offset``; see
    ``lewm_fast.data.swm_format``). Item ``i`` is a dict of tensors (T = num_frames, A = env action dim):

    - ``pixels``  float32 (T, 3, H, W): ImageNet-normalised frames (``lewm_fast.preprocess_frames``), resized with
      antialiased bilinear interpolation (then rounded to uint8 levels) when ``image_size`` differs from the file's;
    - ``action``  float32 (T, frameskip * A): for frame j, the ``frameskip`` env actions of steps
      ``start + j*frameskip .. start + (j+1)*frameskip - 1`` concatenated in time order, each normalised per dimension;
    - ``proprio`` float32 (T, P): normalised proprioception at the T frames (P = 0 when the file has none);
    - ``state``   float64 (T, S): raw simulator states at the T frames (for probes and evaluation; S = 0 when none).

    NaN actions are passed through as NaN wherever the file stores them. A file may also hold NaN actions before an
    episode's last step (a recording problem): they are read as NaN too, and the training loss reads them as 0, as
    stable-worldmodel's training does (``torch.nan_to_num``); ``lewm_fast.data.find_nan_actions`` lists them
    (``lewm-train`` reports them once, and refuses such a file with ``data.nan_actions=error``).

    Normalisation uses the statistics of all the file's episodes (``stats``; lewm_fast files store them, for
    stable-worldmodel files they are streamed from the action and proprio columns): ``(x - mean) / std``, std floored
    to 1 for constant dimensions; actions by ``action_codec``, the ``ActionCodec`` evaluation acts with. Windows never
    cross episodes and come episode by episode, start by start:

    - lewm_fast files: every start with all T frames inside one episode. The last action block may run past the
      episode's final frame; those entries (and the file's NaN action after the final frame) are NaN, as in the LeWM
      loader — the training loss replaces NaN actions with 0, and LeWM's predictor never consumes the last frame's
      block;
    - stable-worldmodel files: exactly ``stable_worldmodel.data.HDF5Dataset(frameskip, num_steps=num_frames)``'s
      windows (same count, order, frames and actions): every start with all ``num_frames * frameskip`` steps inside one
      episode; episodes shorter than that give none.

    The HDF5 file is opened lazily, once per process, so a ``DataLoader`` with worker processes (fork or spawn) works.
    ``episodes`` restricts the dataset to those episode indices (e.g. a train/validation split). ``columns`` maps the
    roles pixels, action, proprio, state to other column names (stable-worldmodel files; proprio and state are
    optional). ``env`` names the environment of a file that records none (``env_name``; None: unknown). ``stats``
    replaces the file's statistics (e.g. a held-out split reusing the training set's).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_frames: int = 4,
        frameskip: int = 5,
        image_size: int | None = None,
        episodes: Sequence[int] | None = None,
        columns: Mapping[str, str | None] | None = None,
        env: str | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"episode file {self.path} does not exist")
        self.num_frames = _check_positive(num_frames, "num_frames")
        self.frameskip = _check_positive(frameskip, "frameskip")
        with open_h5(self.path) as f:
            self.layout: EpisodeLayout = read_layout(f, columns=columns, env=env)
            self.stats: Stats = read_layout_stats(f, self.layout) if stats is None else stats
        layout = self.layout
        self.env_name: str | None = layout.env
        self.stored_image_size = layout.image_size
        self.env_action_dim, self.proprio_dim, self.state_dim = layout.action_dim, layout.proprio_dim, layout.state_dim
        self.image_size = self.stored_image_size if image_size is None else check_image_size(image_size)
        self.action_dim = self.frameskip * self.env_action_dim
        starts, lengths, episode_ids = layout.starts, layout.lengths, np.arange(layout.num_episodes)
        if episodes is not None:
            index = np.asarray(episodes, dtype=np.int64).reshape(-1)
            if index.size and (index.min() < -len(starts) or index.max() >= len(starts)):
                raise IndexError(f"episodes must index the {len(starts)} episodes of {self.path}, got {list(index)}")
            starts, lengths, episode_ids = starts[index], lengths[index], episode_ids[index]
        self._window_steps = layout.window_steps(self.num_frames, self.frameskip)  # steps a window covers
        counts = np.maximum(lengths - self._window_steps + 1, 0)
        if counts.sum() == 0:
            raise ValueError(
                f"no episode of {self.path} has the {self._window_steps} steps a window of num_frames="
                f"{self.num_frames}, frameskip={self.frameskip} needs (longest: {int(lengths.max(initial=0))})"
            )
        self._window_start = np.concatenate([s + np.arange(c) for s, c in zip(starts, counts, strict=True)])
        self._window_end = np.repeat(starts + lengths, counts)  # exclusive end of each window's episode
        # per used episode, for error messages: its index in the file, first step, and windows before it end
        self._episode_ids, self._episode_starts, self._episode_window_end = episode_ids, starts, np.cumsum(counts)
        self.action_codec = ActionCodec(self.stats.action_mean, self.stats.action_std, self.frameskip,
                                        self.env_action_dim)
        self._proprio_mean = torch.as_tensor(self.stats.proprio_mean, dtype=torch.float32)
        self._proprio_std = torch.as_tensor(self.stats.proprio_std, dtype=torch.float32)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self._window_start)

    @property
    def episode_ids(self) -> list[int]:
        """The file's episode indices this dataset reads (e.g. a training or held-out split)."""
        return [int(e) for e in self._episode_ids]

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():  # a forked worker must not share the parent's handle
            self._file = open_h5(self.path)
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions concatenated per block (..., frameskip*A) -> normalised, as the model sees them."""
        return self.action_codec.normalize(action)

    def denormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised action blocks (..., frameskip*A) -> env actions (..., frameskip*A), e.g. for a CEM plan."""
        return self.action_codec.denormalize(action)

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        return preprocess_frames(resize_frames(torch.from_numpy(frames), self.image_size))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} sequences")
        try:
            return self._read(index)
        except OSError as exc:  # h5py: a chunk whose filter fails, a truncated file
            slot = int(np.searchsorted(self._episode_window_end, index % len(self), side="right"))
            episode = int(self._episode_ids[slot])
            step = int(self._window_start[index]) - int(self._episode_starts[slot])
            last = step + self._window_steps - 1
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EpisodeReadError(
                f"cannot read {self.path}: episode {episode}, steps {step}..{last} are unreadable ({reason}); "
                f"the file is damaged there. Training does not skip unreadable sequences (every batch of a resumable "
                f"run is fixed): restore or re-collect the file (lewm-collect), then resume the run"
            ) from None

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        start, end = int(self._window_start[index]), int(self._window_end[index])
        t, fs = self.num_frames, self.frameskip
        span = (t - 1) * fs + 1  # steps from the first to the last frame
        f, layout = self._h5(), self.layout
        # one chunk per frame: frame-by-frame reads beat a strided read of the span
        frames = np.concatenate([read_rows(f, layout, "pixels", start + j * fs, start + j * fs + 1) for j in range(t)])
        actions = np.full((t * fs, self.env_action_dim), np.nan, dtype=np.float32)
        stop = min(start + t * fs, end)
        actions[: stop - start] = read_rows(f, layout, "action", start, stop)
        action = self.normalize_action(torch.from_numpy(actions).reshape(t, fs * self.env_action_dim))
        proprio = torch.from_numpy(read_rows(f, layout, "proprio", start, start + span, fs)) - self._proprio_mean
        return {
            "pixels": self._pixels(frames),
            "action": action,
            "proprio": proprio / self._proprio_std,
            "state": torch.from_numpy(read_rows(f, layout, "state", start, start + span, fs)),
        }
