"""Categorical CEM for discrete actions (stable-worldmodel's ``CategoricalCEMSolver``): per (step, block position) a
categorical distribution over n categories, candidates by Gumbel-max, fed to the model as one-hot blocks."""

from __future__ import annotations

from typing import Optional

import torch


def gumbel_max_indices(probs: torch.Tensor, num_samples: int,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """probs (B, H, P, n) -> ``num_samples`` categorical draws (B, num_samples, H, P) int64 by Gumbel-max: one
    ``torch.rand`` of shape (B, num_samples, H, P, n) from ``generator``, clamped to >= 1e-10 like the log-probs."""
    b, h, p, n = probs.shape
    log_probs = probs.clamp_min(1e-10).log().unsqueeze(1).expand(b, num_samples, h, p, n)
    u = torch.rand(log_probs.shape, generator=generator, device=probs.device, dtype=probs.dtype).clamp_min(1e-10)
    return (log_probs - (-u.log()).log()).argmax(dim=-1)
