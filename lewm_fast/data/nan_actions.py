"""Actions stored as NaN before their episode's last step.

Both layouts store NaN as the action of each episode's last step (no action follows the last frame). A NaN action
anywhere else is a recording problem; stable-worldmodel reads it like the boundary one (its training scripts replace
every NaN action of a batch by 0 with ``torch.nan_to_num``, and its normalisation statistics skip the row), and so do
lewm_fast's ``SequenceDataset`` and training loss. ``find_nan_actions`` finds them so that a caller can report them
once (``lewm-train`` prints a note) or refuse the file (``lewm-train data.nan_actions=error``).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from .h5format import Stats
from .layout import EpisodeLayout, read_layout_stats
from .swm_format import BlockVisitor, row_blocks, stream_stats

NAN_ACTION_POLICIES = ("zero", "error")
SHOWN = 3  # (episode, step) examples a message names


@dataclass(frozen=True)
class NanActions:
    """NaN actions before the last step of their episode in an episode file.

    ``episodes``: the file's episode indices holding one or more, ascending; ``counts``: how many steps each holds;
    ``first``: (episode, step) of the first few, by episode and step (step counted from the episode's first frame,
    0-based).
    """

    path: str
    episodes: tuple[int, ...]
    counts: tuple[int, ...]
    first: tuple[tuple[int, int], ...]

    @property
    def steps(self) -> int:
        """Steps with a NaN action before their episode's last step, all episodes together."""
        return sum(self.counts)

    def __bool__(self) -> bool:
        return bool(self.episodes)

    def describe(self) -> str:
        """One sentence: the file, how many steps in how many episodes, and the first few of them."""
        where = ", ".join(f"episode {e} step {s}" for e, s in self.first)
        more = ", ..." if self.steps > len(self.first) else ""
        return (f"{self.path} holds {self.steps} NaN action step(s) before the last step of {len(self.episodes)} "
                f"episode(s) ({where}{more})")


def find_nan_actions(f: h5py.File, layout: EpisodeLayout) -> NanActions:
    """The NaN actions of an open episode file that are not on an episode's last step, streaming the action column
    (``swm_format.STATS_BLOCK_ROWS`` rows at a time)."""
    rows: list[np.ndarray] = []
    ds = f[layout.columns["action"]]
    for lo, hi in row_blocks(layout.starts, layout.lengths):
        _nan_rows(rows)(lo, ds[lo:hi].reshape(hi - lo, -1))
    return _locate(str(f.filename), layout, rows)


def read_stats_and_nan_actions(f: h5py.File, layout: EpisodeLayout) -> tuple[Stats, NanActions]:
    """``read_layout_stats`` and ``find_nan_actions`` with the action column read once: a stable-worldmodel file's
    statistics stream it anyway (one-row chunks: the slow part of opening a large file)."""
    if layout.kind != "swm":
        return read_layout_stats(f, layout), find_nan_actions(f, layout)  # statistics from the moment rows
    rows: list[np.ndarray] = []
    dims = (layout.action_dim, layout.proprio_dim)
    stats = stream_stats(f, layout.columns["action"], layout.columns["proprio"], dims, layout.starts, layout.lengths,
                         visit_action=_nan_rows(rows))
    return stats, _locate(str(f.filename), layout, rows)


def _nan_rows(found: list[np.ndarray]) -> BlockVisitor:
    """A block visitor appending the file rows of the block's actions that hold a NaN to ``found``."""
    return lambda lo, block: found.append(lo + np.flatnonzero(np.isnan(block).any(axis=1)))


def _locate(path: str, layout: EpisodeLayout, found: list[np.ndarray]) -> NanActions:
    """File rows holding a NaN action -> the ``NanActions`` of those before their episode's last step."""
    rows = np.concatenate(found) if found else np.zeros(0, np.int64)
    nonempty = np.flatnonzero(layout.lengths > 0)  # row -> episode: every row lies in exactly one non-empty episode
    order = nonempty[np.argsort(layout.starts[nonempty], kind="stable")]
    episode = order[np.searchsorted(layout.starts[order], rows, side="right") - 1] if len(rows) else rows
    step = rows - layout.starts[episode]
    inside = step < layout.lengths[episode] - 1
    episode, step = episode[inside], step[inside]
    episodes, counts = np.unique(episode, return_counts=True)
    first = sorted(zip(episode.tolist(), step.tolist()))[:SHOWN]
    return NanActions(path, tuple(episodes.tolist()), tuple(counts.tolist()), tuple(first))
