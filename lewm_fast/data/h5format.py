"""The episode file: an HDF5 layout written one whole episode at a time, readable after a crash.

Per-step datasets (all episodes concatenated, N steps in total; an episode of L actions holds L + 1 steps):

- ``pixels``  uint8 (N, H, W, 3): the frame at each step; one chunk per frame, gzip (level 4) or lzf;
- ``action``  float32 (N, A): the action taken at that step; NaN on the last step of every episode;
- ``proprio`` float32 (N, P): proprioception at that step;
- ``state``   float64 (N, S): the full simulator state at that step (``env.unwrapped.set_state`` restores it).

Per-episode datasets (E rows): ``episode_starts``, ``episode_lengths`` (steps, i.e. frames), ``episode_seeds``
(the reset seed), ``episode_expert`` (1 if the expert drove it; both -1 when unknown, e.g. episodes converted from a
stable-worldmodel file), and the moment sums that give the normalisation statistics, ``{action,proprio}_{count,sum,
sumsq}`` ((E,), (E,A|P), (E,A|P), float64, NaN actions excluded). A file without proprio or state keeps 0-wide
datasets.

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

import functools
import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT_VERSION = 1
FRAMESKIP_HINT = 5
GZIP_LEVEL = 4
LOWDIM_CHUNK = 256  # rows per chunk of action/proprio/state: a random training window decompresses one or two
COMPRESSIONS = ("gzip", "lzf")
STEP_KEYS = ("pixels", "action", "proprio", "state")
MOMENT_KEYS = ("action", "proprio")
STD_FLOOR = 1e-6
EPISODE_KEYS = ("episode_starts", "episode_lengths", "episode_seeds", "episode_expert")
LAYOUT_DATASETS = (*STEP_KEYS, *EPISODE_KEYS,
                   *(f"{key}_{suffix}" for key in MOMENT_KEYS for suffix in ("count", "sum", "sumsq")))


class EpisodeFileError(ValueError):
    """The file is not an episode file (lewm_fast's or stable-worldmodel's layout), or not what was expected."""


class EpisodeReadError(OSError):
    """Stored data could not be read back (a corrupt chunk, a truncated file); the message names file, episode, step."""


@functools.cache
def register_hdf5plugin() -> bool:
    """Import ``hdf5plugin`` when installed, which registers Blosc, Zstd, LZ4, Bitshuffle, ... with HDF5 (files of
    stable-worldmodel often use them); -> whether it is installed."""
    try:
        importlib.import_module("hdf5plugin")
    except ImportError:
        return False
    return True


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``, with an EpisodeFileError naming the file when it cannot be opened (not HDF5,
    truncated, locked by a writer); HDF5's own message ("file signature not found") does not name it. Registers the
    ``hdf5plugin`` filters first when that package is installed.

    Read-only files are opened in SWMR read mode, as stable-worldmodel's ``HDF5Dataset`` opens them: HDF5 lets one
    process open a file twice only with the same SWMR flag, so this process can then also read it with
    stable-worldmodel (or with plain ``h5py.File(path, "r")``). A file this process already holds open without SWMR
    (a plain ``h5py.File(path, "r")`` opened first) is opened the same way."""
    register_hdf5plugin()
    try:
        return _open_read(path) if mode == "r" else h5py.File(path, mode)
    except OSError as exc:
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise EpisodeFileError(f"cannot open {path} as an HDF5 episode file ({reason}); was it written by lewm-collect?") from None


def _open_read(path: str | os.PathLike) -> h5py.File:
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as exc:
        if "SWMR read access flag not the same" not in str(exc):
            raise
        return h5py.File(path, "r")  # already open in this process without SWMR


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics: per-dimension means and standard deviations (float64)."""

    action_mean: np.ndarray
    action_std: np.ndarray
    proprio_mean: np.ndarray
    proprio_std: np.ndarray


def moments(values: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(count, sum, sum of squares) over the rows of ``values`` (n, D) that hold no NaN or inf; float64."""
    finite = values[np.isfinite(values).all(axis=1)].astype(np.float64)
    return float(len(finite)), finite.sum(axis=0), np.square(finite).sum(axis=0)


def mean_std(count: float, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (D,) from ``moments`` sums; std below STD_FLOOR (constant dimensions) becomes 1."""
    if count == 0:
        return np.zeros_like(total), np.ones_like(total)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, np.where(std < STD_FLOOR, 1.0, std)


def check_datasets(f: h5py.File) -> None:
    """EpisodeFileError naming the file and the first dataset of the layout it lacks (every one is written at
    creation, so only a file edited by hand or by another tool misses one)."""
    for key in LAYOUT_DATASETS:
        if not isinstance(f.get(key), h5py.Dataset):
            raise EpisodeFileError(f"{f.filename} is a lewm_fast episode file (format_version attribute) but has no "
                                   f"{key!r} column; it holds {', '.join(sorted(f.keys())) or 'nothing'}. Re-collect "
                                   "it (lewm-collect) or convert the file it came from (lewm-data convert)")


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
        mean, std = mean_std(count, f[f"{key}_sum"][:n].sum(axis=0), f[f"{key}_sumsq"][:n].sum(axis=0))
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return Stats(**out)


def _growable(width: int, rows: int) -> dict[str, tuple]:
    """maxshape and chunks of a (N, width) dataset that grows by rows; a 0-wide one (no proprio, no state) still needs
    chunks of width >= 1."""
    return {"maxshape": (None, max(width, 1)), "chunks": (rows, max(width, 1))}


def check_append_attrs(f: h5py.File, attrs: dict[str, Any]) -> None:
    """EpisodeFileError unless the file's attributes equal ``attrs`` (the settings of the run appending to it)."""
    for key, expected in attrs.items():
        found = f.attrs.get(key)
        if found is None:
            raise EpisodeFileError(f"cannot append to {f.filename}: it records no {key} (was it written by "
                                   f"lewm-collect?); this run has {key}={expected!r}")
        if not np.array_equal(np.asarray(found), np.asarray(expected)):
            shown = found.item() if isinstance(found, np.generic) else found
            raise EpisodeFileError(
                f"cannot append to {f.filename}: it was written with {key}={shown!r}, this run has {key}={expected!r}"
            )


def append_rows(f: h5py.File, columns: dict[str, np.ndarray], lo: int) -> int:
    """Write the T rows of each per-step column (name -> array (T, *per_step_shape)) at rows ``lo..lo+T-1``, growing
    the datasets; every array is checked against its dataset before anything is written. -> ``lo + T``."""
    steps = len(next(iter(columns.values())))
    for key, values in columns.items():
        expected = (steps, *f[key].shape[1:])
        if values.shape != expected:
            raise ValueError(f"episode {key} must have shape {expected}, got {values.shape}")
    for key, values in columns.items():
        f[key].resize(lo + steps, axis=0)
        f[key][lo:lo + steps] = values
    return lo + steps


class EpisodeWriterBase:
    """An open episode file being written: ``num_episodes`` committed episodes of ``num_steps`` rows in all; closes
    the file on ``close`` or at the end of a ``with`` block."""

    num_episodes: int
    num_steps: int

    def __init__(self, f: h5py.File) -> None:
        self.f = f

    @classmethod
    def append(cls, path: str | os.PathLike, *, attrs: dict[str, Any]) -> Self:
        """Reopen the file at ``path`` to add episodes: its attributes must equal ``attrs`` (the appending run's
        settings); rows past its last committed episode (an interrupted writer's) are dropped."""
        f = open_h5(path, "r+")
        try:
            writer = cls(f)
            check_append_attrs(f, attrs)
            writer._truncate()
            return writer
        except BaseException:
            f.close()
            raise

    def _truncate(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeWriter(EpisodeWriterBase):
    """Appends whole episodes to an episode file (see the module docstring for layout and commit protocol).

    ``create`` starts a new file (replacing any file at ``path``); ``append`` reopens an existing one, dropping an
    unfinished tail, and checks that ``attrs`` agree with what the file was created with.
    """

    def __init__(self, f: h5py.File) -> None:
        super().__init__(f)
        self.num_episodes = committed_episodes(f)
        check_datasets(f)
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
                f.create_dataset(key, (0, dim), dtype, **_growable(dim, LOWDIM_CHUNK), **opts)
            for key, dtype in zip(EPISODE_KEYS, (np.int64, np.int64, np.int64, np.int8), strict=True):
                f.create_dataset(key, (0,), dtype, maxshape=(None,), chunks=(1024,))
            for key, dim in (("action", action_dim), ("proprio", proprio_dim)):
                f.create_dataset(f"{key}_count", (0,), np.float64, maxshape=(None,), chunks=(1024,))
                for suffix in ("sum", "sumsq"):
                    f.create_dataset(f"{key}_{suffix}", (0, dim), np.float64, **_growable(dim, 256))
            writer = cls(f)
            writer._write_stats()
            f.flush()
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
        self, pixels: np.ndarray, action: np.ndarray, proprio: np.ndarray, state: np.ndarray, *,
        seed: int | None = None, expert: bool | None = None,
    ) -> None:
        """Append one episode of T steps: pixels (T,H,W,3) uint8, action (T,A) (NaN on the last step), proprio (T,P),
        state (T,S); commits it before returning. ``seed`` / ``expert`` None (unknown, e.g. converted from a
        stable-worldmodel file) are stored as -1."""
        columns = {"pixels": pixels, "action": action, "proprio": proprio, "state": state}
        lo, hi = self.num_steps, append_rows(self.f, columns, self.num_steps)
        self.f.flush()
        row = {"episode_starts": lo, "episode_lengths": hi - lo, "episode_seeds": -1 if seed is None else seed,
               "episode_expert": -1 if expert is None else int(expert)}
        for key in MOMENT_KEYS:
            row[f"{key}_count"], row[f"{key}_sum"], row[f"{key}_sumsq"] = moments(columns[key])
        e = self.num_episodes
        for key, value in row.items():
            self.f[key].resize(e + 1, axis=0)
            self.f[key][e] = value
        self.f.flush()
        self.num_episodes, self.num_steps = e + 1, hi
        self.f.attrs["num_episodes"] = self.num_episodes  # the commit record
        self._write_stats()
        self.f.flush()
