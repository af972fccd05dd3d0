"""The one action normalisation of lewm_fast: env actions <-> the model's normalised action blocks, used by datasets,
evaluation, analyses and the ONNX export. Normalised = ``(action - mean) / std`` with the training data's statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ActionCodec:
    """Maps the model's normalised action blocks (frameskip*A,) to env actions (frameskip, A) and back.

    ``mean``/``std`` are the training data's action statistics, per env action dimension (A,) or per block entry
    (frameskip*A,); a block is ``frameskip`` consecutive env actions, flattened row-major. ``mean``/``std`` are kept
    as float64 (frameskip, A).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], frameskip: int, action_dim: int):
        width = frameskip * action_dim
        mean_a, std_a = np.asarray(mean, dtype=np.float64).ravel(), np.asarray(std, dtype=np.float64).ravel()
        if mean_a.shape != std_a.shape or mean_a.size not in (action_dim, width):
            raise ValueError(
                f"action statistics must have {action_dim} (per env action) or {width} (per block) entries, got mean "
                f"{mean_a.size} and std {std_a.size}"
            )
        if not np.all(std_a > 0):
            raise ValueError(f"action std must be > 0, got {std_a.tolist()}")
        reps = frameskip if mean_a.size == action_dim else 1
        self.mean = np.tile(mean_a, reps).reshape(frameskip, action_dim)
        self.std = np.tile(std_a, reps).reshape(frameskip, action_dim)
        self.frameskip, self.action_dim = frameskip, action_dim
        self._block_mean, self._block_std = torch.from_numpy(self.mean.ravel()), torch.from_numpy(self.std.ravel())

    def normalize(self, blocks: torch.Tensor) -> torch.Tensor:
        """Env actions concatenated per block (..., frameskip*A) -> normalised, computed in ``blocks``' dtype."""
        return (blocks - self._block_mean.to(blocks)) / self._block_std.to(blocks)

    def denormalize(self, blocks: torch.Tensor) -> torch.Tensor:
        """Normalised blocks (..., frameskip*A) -> env actions (..., frameskip*A), computed in ``blocks``' dtype."""
        return blocks * self._block_std.to(blocks) + self._block_mean.to(blocks)

    def to_env(self, block: torch.Tensor | np.ndarray) -> np.ndarray:
        """(frameskip*A,) normalised -> (frameskip, A) float64 env actions."""
        block = torch.as_tensor(block).detach().float().cpu().double().reshape(-1)
        return self.denormalize(block).numpy().reshape(self.frameskip, self.action_dim)

    def to_model(self, actions: np.ndarray) -> torch.Tensor:
        """(frameskip, A) env actions -> (frameskip*A,) normalised float32 (computed in float64)."""
        return self.normalize(torch.from_numpy(np.asarray(actions, dtype=np.float64).reshape(-1))).float()
