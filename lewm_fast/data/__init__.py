"""Episode collection, the HDF5 episode file, and the training-sequence dataset."""

from .collect import DEFAULT_EPISODE_LEN, collect, episode_seeds, rollout
from .dataset import SequenceDataset
from .h5format import EpisodeFileError, EpisodeReadError, EpisodeWriter, Stats, load_episode, read_index, read_stats

__all__ = [
    "DEFAULT_EPISODE_LEN", "EpisodeFileError", "EpisodeReadError", "EpisodeWriter", "SequenceDataset", "Stats", "collect",
    "episode_seeds", "load_episode", "read_index", "read_stats", "rollout",
]
