"""Episode splits: which episodes of a file train and which are held out (``lewm-train``'s validation split, the
probes' test split)."""

from __future__ import annotations

from typing import List, Tuple

import torch


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """(training, held-out) episode indices: ``round(val_fraction * num_episodes)`` episodes (at least 1, and at least
    1 left for training) drawn by a permutation seeded with ``seed``; none when val_fraction is 0."""
    if val_fraction <= 0 or num_episodes < 2:
        return list(range(num_episodes)), []
    n_val = min(max(1, round(val_fraction * num_episodes)), num_episodes - 1)
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])
