"""The episode file: an HDF5 layout written one whole episode at a time, readable after a crash.

Per-step datasets (all episodes concatenated, N steps in total; an episode of L actions holds L + 1 steps):

- ``pixels``  uint8 (N, H, W, 3): the frame at each step; one chunk per frame, gzip (level 4) or lzf;
- ``action``  float32 (N, A): the action taken at that step; NaN on the last step of every episode;
- ``proprio`` float32 (N, P): proprioception at that step;
- ``state``   float64 (N, S): the full simulator state at that step (``env.unwrapped.set_state`` restores it).

Per-episode datasets (E rows): ``episode_starts``, ``episode_lengths`` (steps, i.e. frames), ``episode_seeds``
(the reset seed), ``episode_expert`` (1 if the expert drove it), and the moment sums that give the normalisation
statistics, ``{action,proprio}_{count,sum,sumsq}`` ((E,), (E,A|P), (E,A|P), float64, NaN actions excluded).

File attributes: ``format_version``, ``env``, ``image_size``, ``frameskip`` (hint for readers), ``action_dim``,
``proprio_dim``, ``state_dim``, ``seed``, ``policy``, ``expert_fraction``, ``episode_len``, ``env_kwargs`` (JSON),
``num_episodes`` and the derived ``{action,proprio}_{mean,std}``.

Commit protocol: an episode's steps are written and flushed, then its per-episode rows (flushed), then ``num_episodes``
and the derived mean/std attributes (flushed). ``num_episodes`` is the commit record: readers look at the first
``num_episodes`` episodes only and compute statistics from their moment rows, and opening for append truncates anything
past them (the unfinished tail of a killed writer). HDF5 has no journal: a process killed *while* it writes can still,
rarely, damage the file; the collector defers SIGINT/SIGTERM while it writes, so only SIGKILL or a power cut can.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
FRAMESKIP_HINT = 5
GZIP_LEVEL = 4
LOWDIM_CHUNK = 256  # rows per chunk of action/proprio/state: a random training window decompresses one or two
COMPRESSIONS = ("gzip", "lzf")
STEP_KEYS = ("pixels", "action", "proprio", "state")
MOMENT_KEYS = ("action", "proprio")
STD_FLOOR = 1e-6


class EpisodeFileError(ValueError):
    """The file is not a lewm_fast episode file, or does not match what was expected."""


class EpisodeReadError(OSError):
    """Stored data could not be read back (a corrupt chunk, a truncated file); the message names file, episode, step."""


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``, with an EpisodeFileError naming the file when it cannot be opened (not HDF5,
    truncated, locked by a writer); HDF5's own message ("file signature not found") does not name it."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise EpisodeFileError(f"cannot open {path} as an HDF5 episode file ({reason}); was it written by lewm-collect?") from None


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics: per-dimension means and standard deviations (float64)."""

    action_mean: np.ndarray
    action_std: np.ndarray
    proprio_mean: np.ndarray
    proprio_std: np.ndarray


def _moments(values: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    finite = values[np.isfinite(values).all(axis=1)].astype(np.float64)
    return float(len(finite)), finite.sum(axis=0), np.square(finite).sum(axis=0)


def _mean_std(count: float, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if count == 0:
        return np.zeros_like(total), np.ones_like(total)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, np.where(std < STD_FLOOR, 1.0, std)


def committed_episodes(f: h5py.File) -> int:
    if f.attrs.get("format_version") != FORMAT_VERSION or "num_episodes" not in f.attrs:
        raise EpisodeFileError(f"{f.filename} is not a lewm_fast episode file (format_version {FORMAT_VERSION})")
    return int(f.attrs["num_episodes"])


def read_index(f: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    """(episode_starts, episode_lengths) of the committed episodes, int64 (E,)."""
    n = committed_episodes(f)
    return f["episode_starts"][:n].astype(np.int64), f["episode_lengths"][:n].astype(np.int64)


def read_stats(f: h5py.File) -> Stats:
    """Normalisation statistics of the committed episodes (std floored: constant dimensions get std 1)."""
    n = committed_episodes(f)
    out = {}
    for key in MOMENT_KEYS:
        count = float(f[f"{key}_count"][:n].sum())
        mean, std = _mean_std(count, f[f"{key}_sum"][:n].sum(axis=0), f[f"{key}_sumsq"][:n].sum(axis=0))
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return Stats(**out)


class EpisodeWriter:
    """Appends whole episodes to an episode file (see the module docstring for layout and commit protocol).

    ``create`` starts a new file (replacing any file at ``path``); ``append`` reopens an existing one, dropping an
    unfinished tail, and checks that ``attrs`` agree with what the file was created with.
    """

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.num_episodes = committed_episodes(f)
        starts, lengths = read_index(f)
        self.num_steps = int(starts[-1] + lengths[-1]) if len(starts) else 0

    @classmethod
    def create(
        cls, path: str | os.PathLike, *, env: str, image_size: int, action_dim: int, proprio_dim: int, state_dim: int,
        compression: str = "gzip", attrs: dict[str, Any] | None = None,
    ) -> EpisodeWriter:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        f = open_h5(path, "w")
        try:
            f.attrs.update({
                "format_version": FORMAT_VERSION, "env": env, "image_size": image_size, "frameskip": FRAMESKIP_HINT,
                "action_dim": action_dim, "proprio_dim": proprio_dim, "state_dim": state_dim,
                **(attrs or {}), "num_episodes": 0,
            })
            opts = {"compression": compression, "compression_opts": GZIP_LEVEL if compression == "gzip" else None}
            f.create_dataset("pixels", (0, image_size, image_size, 3), np.uint8,
                             maxshape=(None, image_size, image_size, 3), chunks=(1, image_size, image_size, 3), **opts)
            for key, dim, dtype in (("action", action_dim, np.float32), ("proprio", proprio_dim, np.float32),
                                    ("state", state_dim, np.float64)):
                f.create_dataset(key, (0, dim), dtype, maxshape=(None, dim), chunks=(LOWDIM_CHUNK, dim), **opts)
            for key, dtype in (("episode_starts", np.int64), ("episode_lengths", np.int64),
                               ("episode_seeds", np.int64), ("episode_expert", np.int8)):
                f.create_dataset(key, (0,), dtype, maxshape=(None,), chunks=(1024,))
            for key, dim in (("action", action_dim), ("proprio", proprio_dim)):
                f.create_dataset(f"{key}_count", (0,), np.float64, maxshape=(None,), chunks=(1024,))
                for suffix in ("sum", "sumsq"):
                    f.create_dataset(f"{key}_{suffix}", (0, dim), np.float64, maxshape=(None, dim), chunks=(256, dim))
            writer = cls(f)
            writer._write_stats()
            f.flush()
            return writer
        except BaseException:
            f.close()
            raise

    @classmethod
    def append(cls, path: str | os.PathLike, *, attrs: dict[str, Any]) -> EpisodeWriter:
        f = open_h5(path, "r+")
        try:
            writer = cls(f)
            for key, expected in attrs.items():
                found = f.attrs.get(key)
                if found is None or not np.array_equal(np.asarray(found), np.asarray(expected)):
                    shown = found.item() if isinstance(found, np.generic) else found
                    raise EpisodeFileError(
                        f"cannot append to {Path(path)}: it was written with {key}={shown!r}, this run has "
                        f"{key}={expected!r}"
                    )
            writer._truncate()
            return writer
        except BaseException:
            f.close()
            raise

    def _truncate(self) -> None:
        """Drop steps and episode rows past the last committed episode (left by an interrupted writer)."""
        for key in STEP_KEYS:
            if self.f[key].shape[0] != self.num_steps:
                self.f[key].resize(self.num_steps, axis=0)
        for key, ds in self.f.items():
            if key not in STEP_KEYS and ds.shape[0] != self.num_episodes:
                ds.resize(self.num_episodes, axis=0)
        self._write_stats()
        self.f.flush()

    def _write_stats(self) -> None:
        stats = read_stats(self.f)
        for key, value in vars(stats).items():
            self.f.attrs[key] = value

    def write_episode(
        self, pixels: np.ndarray, action: np.ndarray, proprio: np.ndarray, state: np.ndarray, *, seed: int, expert: bool
    ) -> None:
        """Append one episode of T steps: pixels (T,H,W,3) uint8, action (T,A) (NaN on the last step), proprio (T,P),
        state (T,S); commits it before returning."""
        steps = len(pixels)
        columns = {"pixels": pixels, "action": action, "proprio": proprio, "state": state}
        for key, values in columns.items():
            ds = self.f[key]
            if values.shape != (steps, *ds.shape[1:]):
                raise ValueError(f"episode {key} must have shape {(steps, *ds.shape[1:])}, got {values.shape}")
        lo, hi = self.num_steps, self.num_steps + steps
        for key, values in columns.items():
            self.f[key].resize(hi, axis=0)
            self.f[key][lo:hi] = values
        self.f.flush()
        row = {"episode_starts": lo, "episode_lengths": steps, "episode_seeds": seed, "episode_expert": int(expert)}
        for key in MOMENT_KEYS:
            row[f"{key}_count"], row[f"{key}_sum"], row[f"{key}_sumsq"] = _moments(columns[key])
        e = self.num_episodes
        for key, value in row.items():
            self.f[key].resize(e + 1, axis=0)
            self.f[key][e] = value
        self.f.flush()
        self.num_episodes, self.num_steps = e + 1, hi
        self.f.attrs["num_episodes"] = self.num_episodes  # the commit record
        self._write_stats()
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_episode(path: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """All per-step arrays of committed episode ``index`` (negative counts from the end)."""
    with open_h5(path) as f:
        starts, lengths = read_index(f)
        if not -len(starts) <= index < len(starts):
            raise IndexError(f"episode {index} out of range: {path} holds {len(starts)} episodes")
        lo = int(starts[index])
        return {key: f[key][lo:lo + int(lengths[index])] for key in STEP_KEYS}
