"""A discrete action set for envs with continuous actions: the codebook the discrete planners (``PGDPlanner``,
``CategoricalCEMPlanner``) choose from.

stable-worldmodel's discrete solvers plan, per horizon step and block position, a categorical choice among ``n``
categories, fed to the model as a one-hot (or, for PGD, relaxed one-hot: a point of the simplex) block. Our envs act
in a box, so ``ActionGrid`` defines the categories explicitly: ``bins`` evenly spaced values per action-block entry
``j`` spanning the env's box in the model's normalised units, ``values[j] = linspace(low_j, high_j, bins)`` (both edges
included; ``bounds.normalized_box`` maps the env's box). A choice per (step, entry) picks one value; a simplex point
``p`` (..., A, bins) stands for ``sum_i p_i values[:, i]``: the relaxed one-hot through a fixed linear codebook.
"""

from __future__ import annotations

import torch

from .bounds import ActionBounds, BoundsLike


def check_bins(bins: int) -> int:
    """``bins`` as an int >= 2 (ValueError otherwise)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2 (values per action entry), got {bins!r}")
    return bins


class ActionGrid:
    """The codebook ``values`` (A, bins) float32 on ``device``: ``bins`` evenly spaced values per entry of an A-wide
    action block, from ``bounds`` low to high (each (A,), normalised units). ValueError for bins < 2 or bad bounds."""

    def __init__(self, bounds: BoundsLike, bins: int, width: int, device: torch.device):
        self.bins = check_bins(bins)
        box = ActionBounds(bounds, width, device)
        steps = torch.linspace(0.0, 1.0, bins, device=device)
        self.values = box.low.unsqueeze(-1) + (box.high - box.low).unsqueeze(-1) * steps

    def decode(self, simplex: torch.Tensor) -> torch.Tensor:
        """(..., A, bins) weights (simplex points, or one-hots) -> (..., A) actions ``sum_i p_i values[:, i]``."""
        return (simplex * self.values).sum(-1)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """(..., A) int64 bin indices -> (..., A) float32 values."""
        values = self.values.expand(*index.shape, self.bins)
        return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def nearest(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., A) actions -> (..., A) int64 index of each entry's nearest value (the lower one on a tie)."""
        return (actions.unsqueeze(-1) - self.values).abs().argmin(-1)

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """(..., A) int64 -> (..., A, bins) float32 one-hot (comparison, no host sync: CUDA-graph safe)."""
        return (index.unsqueeze(-1) == torch.arange(self.bins, device=index.device)).float()

    def spread(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., A, bins) categorical probabilities -> (..., A) the std of the value they pick."""
        mean = self.decode(probs)
        return (probs * (self.values - mean.unsqueeze(-1)).square()).sum(-1).clamp_min(0.0).sqrt()
