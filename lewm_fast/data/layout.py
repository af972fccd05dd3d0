"""One view of an episode file whichever layout it has: lewm_fast's (``h5format``) or stable-worldmodel's
(``swm_format``). ``read_layout`` detects the layout, validates the index and the columns, and returns an
``EpisodeLayout``: where each episode's rows are, which column holds each role, and the per-step sizes.

Roles: ``pixels`` (uint8 frames) and ``action`` are required; ``proprio`` and ``state`` are optional (a file without
them reads as 0-wide arrays). ``columns`` maps a role to another column name (stable-worldmodel files only); mapping a
role to None (or "") ignores that column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import h5py
import numpy as np

from .h5format import (
    FORMAT_VERSION,
    STEP_KEYS,
    EpisodeFileError,
    EpisodeWriter,
    Stats,
    check_datasets,
    open_h5,
    read_index,
    read_stats,
    register_hdf5plugin,
)
from .swm_format import (
    INDEX_KEYS,
    SwmEpisodeWriter,
    check_episode_rows,
    read_swm_index,
    stream_stats,
)

LAYOUTS = ("lewm", "swm")
LAYOUT_NAMES = {"lewm": "lewm_fast", "swm": "stable-worldmodel"}
WRITERS = {"lewm": EpisodeWriter, "swm": SwmEpisodeWriter}
ROLES = STEP_KEYS  # pixels, action, proprio, state
REQUIRED_ROLES = ("pixels", "action")
DEFAULT_COLUMNS = {role: role for role in ROLES}
# filters h5py decodes without plugins: deflate (gzip), shuffle, fletcher32, szip, n-bit, scale-offset, lzf
BUILTIN_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}


@dataclass(frozen=True)
class EpisodeLayout:
    """Where the episodes of a file are and how to read them (E episodes).

    ``kind``: "lewm" or "swm"; ``starts`` / ``lengths``: int64 (E,), first row and steps (frames) of each episode;
    ``columns``: role -> column name, None for an optional role the file lacks; ``env``: the environment the file
    records, None when it records none; ``image_size``: frame side S; ``channels_first``: pixels stored (N,3,S,S)
    rather than (N,S,S,3); ``action_dim`` / ``proprio_dim`` / ``state_dim``: per-step widths (0: no such column).
    """

    kind: str
    starts: np.ndarray
    lengths: np.ndarray
    columns: dict[str, str | None]
    env: str | None
    image_size: int
    channels_first: bool
    action_dim: int
    proprio_dim: int
    state_dim: int

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    def window_steps(self, num_frames: int, frameskip: int) -> int:
        """Steps of its episode a window of ``num_frames`` frames ``frameskip`` apart must lie in. lewm_fast:
        from the first to the last frame (the last action block may run past the episode, padded with NaN);
        stable-worldmodel (``HDF5Dataset``): ``num_frames * frameskip``, every action of every block inside it."""
        if self.kind == "swm":
            return num_frames * frameskip
        return (num_frames - 1) * frameskip + 1


def detect_layout(f: h5py.File) -> str:
    """"lewm" (a ``format_version`` attribute) or "swm" (``ep_len`` and ``ep_offset`` datasets); EpisodeFileError
    saying what each layout needs for anything else."""
    is_lewm, has_index = "format_version" in f.attrs, [key in f for key in INDEX_KEYS]
    if is_lewm and any(has_index):
        raise EpisodeFileError(f"{f.filename} has both lewm_fast's format_version attribute and stable-worldmodel's "
                               "ep_len/ep_offset datasets; cannot tell its layout")
    if is_lewm:
        return "lewm"
    if all(has_index):
        return "swm"
    found = ""
    if any(has_index):
        found = f" (it has {INDEX_KEYS[has_index.index(True)]} but no {INDEX_KEYS[has_index.index(False)]})"
    raise EpisodeFileError(
        f"{f.filename} is not a lewm_fast episode file (format_version {FORMAT_VERSION} attribute, written by "
        f"lewm-collect) nor a stable-worldmodel HDF5 dataset (ep_len and ep_offset datasets indexing per-step columns "
        f"such as pixels and action){found}; its root holds {_names(f)}"
    )


def _names(f: h5py.File) -> str:
    return ", ".join(sorted(f.keys())) or "nothing"


def resolve_columns(columns: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """Role -> column name: ``DEFAULT_COLUMNS`` updated with ``columns`` ("" means None: ignore that column)."""
    unknown = sorted(set(columns or {}) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown column role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    out = {**DEFAULT_COLUMNS, **{role: name or None for role, name in (columns or {}).items()}}
    for role in REQUIRED_ROLES:
        if out[role] is None:
            raise ValueError(f"the {role} role needs a column; got columns.{role}={out[role]!r}")
    return out


def read_layout(
    f: h5py.File, columns: Mapping[str, str | None] | None = None, env: str | None = None
) -> EpisodeLayout:
    """The layout of an open episode file. ``columns``: role -> column name (stable-worldmodel files; see the module
    docstring); ``env``: the environment name when the file records none (an EpisodeFileError if it records
    another). A bad ``columns`` mapping is a ValueError; every problem of the file (layout, index, a missing or
    misshapen column, an unavailable compression filter) an EpisodeFileError naming it."""
    kind = detect_layout(f)
    mapping = resolve_columns(columns)
    if kind == "lewm":
        if mapping != DEFAULT_COLUMNS:
            raise EpisodeFileError(f"{f.filename} is a lewm_fast episode file: its columns are always "
                                   f"{', '.join(ROLES)}; a column mapping applies to stable-worldmodel files only")
        check_datasets(f)
        starts, lengths = read_index(f)
    else:
        starts, lengths = read_swm_index(f)
        mapping = _present_columns(f, mapping)
    recorded = str(f.attrs["env"]) if "env" in f.attrs else None
    if env is not None and recorded is not None and env != recorded:
        raise EpisodeFileError(f"{f.filename} records env={recorded!r}, not {env!r}")
    pixels = _pixels_shape(f, mapping["pixels"])
    dims = {}
    for role in ("action", "proprio", "state"):
        name = mapping[role]
        dims[role] = 0 if name is None else _vector_width(f, name, role)
    for name in (n for n in mapping.values() if n is not None):
        check_episode_rows(f, name, starts, lengths)
        check_filters(f, name)
    return EpisodeLayout(
        kind=kind, starts=starts, lengths=lengths, columns=mapping, env=recorded or env, image_size=pixels[0],
        channels_first=pixels[1], action_dim=dims["action"], proprio_dim=dims["proprio"], state_dim=dims["state"],
    )


def _present_columns(f: h5py.File, mapping: dict[str, str | None]) -> dict[str, str | None]:
    """``mapping`` with optional roles left at their default column set to None when the file lacks that column; a
    required role's column, or a column named for an optional role, must exist."""
    out = dict(mapping)
    for role, name in mapping.items():
        if name is None or isinstance(f.get(name), h5py.Dataset):
            continue
        if role in REQUIRED_ROLES or name != DEFAULT_COLUMNS[role]:
            raise EpisodeFileError(f"{f.filename} has no {name!r} column for {role}; its columns: {_names(f)} "
                                   f"(map another with columns.{role}=<name>)")
        out[role] = None
    return out


def _pixels_shape(f: h5py.File, name: str) -> tuple[int, bool]:
    """(frame side S, channels first) of the pixels column: uint8 (N,S,S,3) or (N,3,S,S)."""
    ds = f[name]
    shape = ds.shape
    if ds.dtype != np.uint8 or len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise EpisodeFileError(f"{f.filename}: column {name!r} (pixels) must hold uint8 RGB frames (N,H,W,3) or "
                               f"(N,3,H,W), got {ds.dtype} {shape}")
    channels_first = shape[3] != 3
    height, width = shape[2:4] if channels_first else shape[1:3]
    if height != width:
        raise EpisodeFileError(f"{f.filename}: column {name!r} (pixels) holds {height}x{width} frames; LeWM needs "
                               "square frames")
    return int(height), channels_first


def _vector_width(f: h5py.File, name: str, role: str) -> int:
    ds = f[name]
    if len(ds.shape) != 2 or ds.dtype.kind not in "fiu":
        raise EpisodeFileError(f"{f.filename}: column {name!r} ({role}) must be numeric (N, D), got {ds.dtype} "
                               f"{ds.shape}")
    return int(ds.shape[1])


def check_filters(f: h5py.File, name: str) -> None:
    """EpisodeFileError when column ``name`` is compressed with an HDF5 filter this process cannot decode."""
    plist = f[name].id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _flags, _values, label = plist.get_filter(i)
        if code in BUILTIN_FILTERS or h5py.h5z.filter_avail(code):
            continue
        label = label.decode(errors="replace").split(";")[0].strip() if label else "unnamed"
        fix = ("hdf5plugin is installed but lacks it: point HDF5_PLUGIN_PATH at a folder holding its HDF5 plugin"
               if register_hdf5plugin() else "pip install hdf5plugin (or pip install 'lewm-fast[swm]') provides "
               "Blosc, Zstd, LZ4, Bitshuffle and more")
        raise EpisodeFileError(f"{f.filename}: column {name!r} is compressed with the HDF5 filter {label!r} (id {code}), "
                               f"which is not available here; {fix}")


def count_episodes(path: str | os.PathLike) -> tuple[int, int]:
    """(episodes, frames) of the episode file at ``path``, either layout."""
    with open_h5(path) as f:
        lengths = read_layout(f).lengths
    return len(lengths), int(lengths.sum())


def read_layout_stats(f: h5py.File, layout: EpisodeLayout) -> Stats:
    """Normalisation statistics over all the file's episodes: lewm_fast files from their moment rows, stable-worldmodel
    files by streaming the action and proprio columns (memory flat in the file size)."""
    if layout.kind == "lewm":
        return read_stats(f)
    return stream_stats(f, layout.columns["action"], layout.columns["proprio"],
                        (layout.action_dim, layout.proprio_dim), layout.starts, layout.lengths)


def read_rows(f: h5py.File, layout: EpisodeLayout, role: str, lo: int, hi: int, step: int = 1) -> np.ndarray:
    """Rows ``lo, lo + step, ... < hi`` of a role's column: pixels uint8 (n,S,S,3) (channels last), action and proprio
    float32 (n,D), state float64 (n,D); a role the file lacks reads as (n, 0)."""
    name = layout.columns[role]
    dtype = np.float64 if role == "state" else np.float32
    if name is None:
        return np.zeros((len(range(lo, hi, step)), 0), dtype)
    values = f[name][lo:hi][::step]
    if role == "pixels":
        return values.transpose(0, 2, 3, 1) if layout.channels_first else values
    return values.astype(dtype, copy=False)


def read_episode(f: h5py.File, layout: EpisodeLayout, index: int) -> dict[str, np.ndarray]:
    """Every role's rows of episode ``index`` (``read_rows`` arrays, T = its length)."""
    lo = int(layout.starts[index])
    return {role: read_rows(f, layout, role, lo, lo + int(layout.lengths[index])) for role in ROLES}


def load_episode(path: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """Every role's rows of episode ``index`` (negative counts from the end) of the file at ``path``, either layout
    (``read_rows`` arrays)."""
    with open_h5(path) as f:
        layout = read_layout(f)
        if not -layout.num_episodes <= index < layout.num_episodes:
            raise IndexError(f"episode {index} out of range: {path} holds {layout.num_episodes} episodes")
        return read_episode(f, layout, index)
