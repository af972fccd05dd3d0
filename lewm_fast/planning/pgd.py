"""Projected gradient descent on the action simplex, for discrete actions (stable-worldmodel's ``PGDSolver``): each
block position holds a point of the n-category simplex, fed to the model as a (relaxed) one-hot block."""

from __future__ import annotations

import torch


def project_simplex(x: torch.Tensor, n: int) -> torch.Tensor:
    """Euclidean projection of every consecutive group of ``n`` values of ``x`` (..., P * n) onto the probability
    simplex {p >= 0, sum p = 1} (the sort-based algorithm of Duchi et al. 2008, as stable-worldmodel computes it)."""
    shape = x.shape
    s = x.reshape(-1, n)
    mu = torch.sort(s, descending=True, dim=-1).values
    cumulative = mu.cumsum(dim=-1)
    indices = torch.arange(1, n + 1, device=s.device, dtype=s.dtype)
    cond = (mu > (cumulative - 1) / indices).to(torch.int32)
    rho = (cond.cumsum(dim=-1) * cond).max(dim=-1, keepdim=True)[0].clamp(min=1)
    psi = (cumulative.gather(-1, rho.long() - 1) - 1) / rho
    return torch.clamp(s - psi, min=0.0).reshape(shape)
