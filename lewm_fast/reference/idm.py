"""The goal-conditioned inverse-dynamics model (GC-IDM, arXiv 2605.08732) on frozen LeWM latents, in plain PyTorch.

``GCIDM(z_t, z_goal, k / K)`` -> the normalised action block executed at frame t, where the goal latent is the one
``k`` frames (model blocks) later and ``K`` the largest offset trained on. One small MLP; it is its own reference
(there is no fused version).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from .._validation import check_positive_int, check_tensor


class GCIDM(nn.Module):
    """MLP ``[z_t, z_goal, k/K] (2D+1) -> [Linear, LayerNorm, GELU] x layers -> Linear -> action block (A)``.

    ``latent_dim`` D (the world model's latent width), ``action_dim`` A (its action-block width, frameskip x env
    action dim), ``hidden`` width and ``layers`` hidden layers, ``horizon`` K (the offset that ``k/K = 1`` means).
    """

    def __init__(self, latent_dim: int, action_dim: int, hidden: int = 512, layers: int = 3, horizon: int = 5):
        super().__init__()
        for value, name in ((latent_dim, "latent_dim"), (action_dim, "action_dim"), (hidden, "hidden"),
                            (layers, "layers"), (horizon, "horizon")):
            check_positive_int(value, name)
        self.latent_dim, self.action_dim, self.hidden, self.layers, self.horizon = (
            latent_dim, action_dim, hidden, layers, horizon)
        blocks, width = [], 2 * latent_dim + 1
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, action_dim))

    def config(self) -> Dict[str, Any]:
        """The constructor arguments (``GCIDM(**idm.config())`` rebuilds it)."""
        return dict(latent_dim=self.latent_dim, action_dim=self.action_dim, hidden=self.hidden, layers=self.layers,
                    horizon=self.horizon)

    def forward(self, z: torch.Tensor, goal: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        """z (B,D), goal (B,D), remaining (B,) = k/K -> normalised action blocks (B,A), in the weights' dtype."""
        check_tensor(z, "z", ndim=2, last_dim=self.latent_dim)
        check_tensor(goal, "goal", ndim=2, last_dim=self.latent_dim)
        check_tensor(remaining, "remaining", ndim=1)
        if goal.shape[0] != z.shape[0] or remaining.shape[0] != z.shape[0]:
            raise ValueError(f"z, goal and remaining must share B, got {tuple(z.shape)}, {tuple(goal.shape)}, "
                             f"{tuple(remaining.shape)}")
        x = torch.cat([z, goal, remaining.unsqueeze(1).to(z.dtype)], dim=1)
        return self.net(x.to(self.net[0].weight.dtype))
