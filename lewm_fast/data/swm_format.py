"""stable-worldmodel's HDF5 layout (``stable_worldmodel.data.HDF5Dataset``; e.g. ``pusht_expert_train.h5``).

One file; per-step columns at the root, all episodes concatenated (N rows), each chunked one row per chunk:
``pixels`` uint8 (N,H,W,3) (or (N,3,H,W)), ``action`` (N,A) (``action[t]`` is taken at step t; NaN on each episode's
last step, as in lewm_fast's layout), ``proprio`` (N,P), ``state`` (N,S), and any others (``reward``, ``ep_idx``,
strings, ...). Two index datasets: ``ep_len`` int32 (E,), the steps of each episode, and ``ep_offset`` int64 (E,), its
first row (stable-worldmodel writes ``ep_offset[i] = ep_len[0] + ... + ep_len[i-1]``). No file attributes are required.

``SwmEpisodeWriter`` writes it (``lewm-collect format=swm``, ``lewm-data convert to=swm``): columns ``pixels``,
``action``, ``proprio`` and ``state`` (left out when 0 wide), ``ep_idx`` and ``step_idx`` (int64 (N,)); pixels
compressed (gzip level 4 or lzf), the one-row chunks of the other columns stored raw (too small to compress); file
attributes ``env``, ``image_size`` and lewm-collect's settings. Commit protocol: an episode's rows are written and
flushed, then its ``ep_offset`` row, then its ``ep_len`` row, the commit record. Readers (this one and
stable-worldmodel's) take ``len(ep_len)`` episodes and ignore rows past them, so a killed writer leaves a readable file;
opening for append drops that unfinished tail. stable-worldmodel's own ``HDF5Writer`` writes ``ep_len`` before
``ep_offset`` (and never flushes), so one it leaves killed between the two may hold an ``ep_len`` row without its
``ep_offset``: this reader ignores that episode too (stable-worldmodel's ``HDF5Dataset`` lists its windows and fails
with an IndexError on reading them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import h5py
import numpy as np

from .h5format import (
    COMPRESSIONS,
    GZIP_LEVEL,
    EpisodeFileError,
    EpisodeWriterBase,
    Stats,
    append_rows,
    mean_std,
    moments,
    open_h5,
)

INDEX_KEYS = ("ep_len", "ep_offset")
BlockVisitor = Callable[[int, np.ndarray], None]  # (first row, rows (n, D)) of each block a streaming pass reads
STATS_BLOCK_ROWS = 1 << 16  # rows read at a time when streaming statistics: memory stays flat in the file size


def _index_column(f: h5py.File, key: str) -> np.ndarray:
    values = f[key]
    if not isinstance(values, h5py.Dataset) or values.ndim != 1 or values.dtype.kind not in "iu":
        shape = getattr(values, "shape", "a group")
        raise EpisodeFileError(f"{f.filename}: {key} must be a 1-D integer dataset (one row per episode), got {shape}")
    return values[:].astype(np.int64)


def read_swm_index(f: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) int64 (E,) of a stable-worldmodel file's episodes, from ``ep_offset`` / ``ep_len``.

    E is the rows both index datasets hold: one row past them in either (a writer killed between its two index
    writes: ``SwmEpisodeWriter`` writes ``ep_offset`` first, stable-worldmodel's ``HDF5Writer`` ``ep_len`` first) is
    an uncommitted episode and ignored. Lengths and offsets must be >= 0 and episodes must not overlap
    (EpisodeFileError naming the first bad episode otherwise).
    """
    lengths, offsets = _index_column(f, "ep_len"), _index_column(f, "ep_offset")
    if abs(len(offsets) - len(lengths)) > 1:
        raise EpisodeFileError(f"{f.filename}: ep_len has {len(lengths)} rows but ep_offset has {len(offsets)}; "
                               "both need one row per episode")
    count = min(len(lengths), len(offsets))
    lengths, offsets = lengths[:count], offsets[:count]
    for key, values in (("ep_len", lengths), ("ep_offset", offsets)):
        bad = np.flatnonzero(values < 0)
        if bad.size:
            raise EpisodeFileError(f"{f.filename}: episode {bad[0]} has {key}[{bad[0]}]={values[bad[0]]}; "
                                   f"{key} must be >= 0")
    order = np.argsort(offsets, kind="stable")
    ends = offsets[order] + lengths[order]
    overlap = np.flatnonzero(offsets[order][1:] < ends[:-1])
    if overlap.size:
        a, b = (int(i) for i in order[overlap[0]:overlap[0] + 2])
        raise EpisodeFileError(
            f"{f.filename}: ep_offset disagrees with ep_len: episode {b} starts at row {offsets[b]} (ep_offset[{b}]) "
            f"inside episode {a}, rows {offsets[a]}..{offsets[a] + lengths[a] - 1} (ep_offset[{a}]={offsets[a]}, "
            f"ep_len[{a}]={lengths[a]}); stable-worldmodel writes ep_offset[i] = ep_len[0] + ... + ep_len[i-1]"
        )
    return offsets, lengths


def check_episode_rows(f: h5py.File, column: str, starts: np.ndarray, lengths: np.ndarray) -> None:
    """EpisodeFileError naming the first episode that runs past the rows of ``column``."""
    rows = f[column].shape[0]
    past = np.flatnonzero(starts + lengths > rows)
    if past.size:
        e = int(past[0])
        raise EpisodeFileError(
            f"{f.filename}: episode {e} covers rows {starts[e]}..{starts[e] + lengths[e] - 1} (ep_offset[{e}]="
            f"{starts[e]}, ep_len[{e}]={lengths[e]}) but column {column!r} has {rows} rows"
        )


def row_blocks(starts: np.ndarray, lengths: np.ndarray, block: int = STATS_BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """(lo, hi) row ranges, at most ``block`` rows each, covering every episode's rows once, in row order (adjacent
    episodes are merged, so a file written by stable-worldmodel is read in ``block``-row slices)."""
    order = np.argsort(starts, kind="stable")
    lo = hi = 0
    for s, n in zip(starts[order].tolist(), lengths[order].tolist(), strict=True):
        if s != hi:
            yield from _split(lo, hi, block)
            lo = s
        hi = s + n
    yield from _split(lo, hi, block)


def _split(lo: int, hi: int, block: int) -> Iterator[tuple[int, int]]:
    for a in range(lo, hi, block):
        yield a, min(a + block, hi)


def column_mean_std(
    f: h5py.File, column: str | None, width: int, starts: np.ndarray, lengths: np.ndarray,
    visit: BlockVisitor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float64 (width,), std floored like ``read_stats``) of ``column`` over the episodes'
    rows, rows holding NaN excluded, streamed ``STATS_BLOCK_ROWS`` rows at a time (``visit`` sees each block); column
    None: empty arrays."""
    count, total, total_sq = 0.0, np.zeros(width), np.zeros(width)
    if column is not None:
        ds = f[column]
        for lo, hi in row_blocks(starts, lengths):
            block = ds[lo:hi].reshape(hi - lo, width)
            if visit is not None:
                visit(lo, block)
            n, s, sq = moments(block)
            count, total, total_sq = count + n, total + s, total_sq + sq
    return mean_std(count, total, total_sq)


def stream_stats(
    f: h5py.File, action: str, proprio: str | None, dims: tuple[int, int], starts: np.ndarray, lengths: np.ndarray,
    visit_action: BlockVisitor | None = None,
) -> Stats:
    """Normalisation statistics of the ``action`` and ``proprio`` columns (widths ``dims``) over the episodes;
    ``visit_action`` sees each block of actions read."""
    action_mean, action_std = column_mean_std(f, action, dims[0], starts, lengths, visit_action)
    proprio_mean, proprio_std = column_mean_std(f, proprio, dims[1], starts, lengths)
    return Stats(action_mean, action_std, proprio_mean, proprio_std)


class SwmEpisodeWriter(EpisodeWriterBase):
    """Appends whole episodes to a stable-worldmodel HDF5 file (layout and commit protocol: module docstring).

    ``create`` starts a new file (replacing any file at ``path``); ``append`` reopens one, dropping an unfinished tail,
    and checks that ``attrs`` agree with the file's (so it appends only to files lewm-collect wrote).
    """

    def __init__(self, f: h5py.File) -> None:
        super().__init__(f)
        starts, lengths = read_swm_index(f)
        self.num_episodes = len(lengths)
        self.num_steps = int((starts + lengths).max(initial=0))

    @classmethod
    def create(
        cls, path: str | os.PathLike, *, env: str | None, image_size: int, action_dim: int, proprio_dim: int,
        state_dim: int, compression: str = "gzip", attrs: dict | None = None,
    ) -> SwmEpisodeWriter:
        """A new file; ``env`` None: not recorded (readers then need it named)."""
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        f = open_h5(path, "w")
        try:
            f.attrs.update({**({"env": env} if env is not None else {}), "image_size": image_size, **(attrs or {})})
            shapes = {"pixels": ((image_size, image_size, 3), np.uint8), "action": ((action_dim,), np.float32),
                      "proprio": ((proprio_dim,), np.float32), "state": ((state_dim,), np.float64),
                      "ep_idx": ((), np.int64), "step_idx": ((), np.int64)}
            for key, (shape, dtype) in shapes.items():
                if 0 in shape:
                    continue  # no such column: readers give (T, 0) arrays
                opts = {"compression": compression, "compression_opts": GZIP_LEVEL if compression == "gzip" else None}
                f.create_dataset(key, (0, *shape), dtype, maxshape=(None, *shape), chunks=(1, *shape),
                                 **(opts if key == "pixels" else {}))
            f.create_dataset("ep_len", (0,), np.int32, maxshape=(None,), chunks=(1024,))
            f.create_dataset("ep_offset", (0,), np.int64, maxshape=(None,), chunks=(1024,))
            f.flush()
            return cls(f)
        except BaseException:
            f.close()
            raise

    def _truncate(self) -> None:
        """Drop rows past the last committed episode (left by an interrupted writer)."""
        for key, ds in self.f.items():
            rows = self.num_episodes if key in INDEX_KEYS else self.num_steps
            if ds.shape[0] != rows:
                ds.resize(rows, axis=0)
        self.f.flush()

    def write_episode(
        self, pixels: np.ndarray, action: np.ndarray, proprio: np.ndarray, state: np.ndarray, *,
        seed: int | None = None, expert: bool | None = None,
    ) -> None:
        """Append one episode of T steps (arrays as ``EpisodeWriter.write_episode``; proprio / state may be 0 wide
        when the file has no such column) and commit it. ``seed`` and ``expert`` are not stored: the layout has no
        per-episode columns (lewm-collect's episode i is seeded from (seed, i), which the file's attributes record)."""
        steps = len(pixels)
        columns = {"pixels": pixels, "action": action, "proprio": proprio, "state": state,
                   "ep_idx": np.full(steps, self.num_episodes, np.int64), "step_idx": np.arange(steps, dtype=np.int64)}
        for key in ("proprio", "state"):
            if key not in self.f and columns[key].shape == (steps, 0):
                del columns[key]
        missing = sorted(set(columns) - set(self.f))
        if missing:
            raise ValueError(f"episode {missing[0]} has shape {columns[missing[0]].shape} but {self.f.filename} has "
                             f"no {missing[0]} column")
        lo = self.num_steps
        hi = append_rows(self.f, columns, lo)
        self.f.flush()
        e = self.num_episodes
        for key, value in (("ep_offset", lo), ("ep_len", hi - lo)):  # ep_len last: the commit record
            self.f[key].resize(e + 1, axis=0)
            self.f[key][e] = value
            self.f.flush()
        self.num_episodes, self.num_steps = e + 1, hi
