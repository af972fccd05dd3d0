"""Episode collection, episode files (lewm_fast's layout and stable-worldmodel's), conversion between them, the
training-sequence dataset, the action normalisation and episode splits."""

from .actions import ActionCodec
from .collect import DEFAULT_EPISODE_LEN, collect, episode_seeds, rollout
from .convert import convert
from .dataset import SequenceDataset
from .h5format import (
    EpisodeFileError,
    EpisodeReadError,
    EpisodeWriter,
    Stats,
    read_index,
    read_stats,
)
from .layout import (
    EpisodeLayout,
    detect_layout,
    load_episode,
    read_layout,
    read_layout_stats,
)
from .nan_actions import NanActions, find_nan_actions, read_stats_and_nan_actions
from .splits import split_episodes
from .swm_format import SwmEpisodeWriter

__all__ = [
    "ActionCodec", "DEFAULT_EPISODE_LEN", "EpisodeFileError", "EpisodeLayout", "EpisodeReadError", "EpisodeWriter",
    "NanActions", "SequenceDataset", "Stats", "SwmEpisodeWriter", "collect", "convert", "detect_layout",
    "episode_seeds", "find_nan_actions", "load_episode", "read_index", "read_layout", "read_layout_stats", "read_stats",
    "read_stats_and_nan_actions", "rollout", "split_episodes",
]
