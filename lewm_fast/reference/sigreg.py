"""SIGReg, the Epps-Pulley sketch of isotropic Gaussianity (eager reference; materialises (T, B, M, K)).

Per frame and random unit direction a_m: x = z @ a_m, c_k = mean_b cos(t_k x), s_k = mean_b sin(t_k x),
stat_m = B * sum_k w_k [(c_k - phi_k)^2 + s_k^2];  SIGReg = mean over frames and directions.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .._validation import check_tensor


def sigreg_knots(knots: int = 17, t_max: float = 3.0, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots t (K,), target characteristic function phi = exp(-t^2/2) (K,), trapezoid weights * phi (K,)."""
    if knots < 2:
        raise ValueError(f"knots must be >= 2, got {knots}")
    t = torch.linspace(0, t_max, knots, dtype=dtype)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, dtype=dtype)
    weights[[0, -1]] = dt
    phi = torch.exp(-t.square() / 2.0)
    return t, phi, weights * phi


def random_projection(
    dim: int, num_proj: int, device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """A (dim, num_proj) with i.i.d. N(0,1) entries, columns scaled to unit L2 norm (float32).

    Without a generator this draws from the global stream exactly as ``torch.randn(dim, num_proj, device=device)``.
    """
    if generator is None:
        a = torch.randn(dim, num_proj, device=device)
    else:
        a = torch.randn(dim, num_proj, device=device, generator=generator)
    return a.div_(a.norm(p=2, dim=0))


def check_sigreg_inputs(z: torch.Tensor, A: Optional[torch.Tensor]) -> None:
    """Shared checks: z (T,B,D) or (B,D) floating and non-empty; A (D,M) floating."""
    check_tensor(z, "z", ndim=(2, 3))
    if A is not None:
        check_tensor(A, "A", ndim=2)
        if A.shape[0] != z.shape[-1]:
            raise ValueError(f"A must have shape (D, M) with D={z.shape[-1]} matching z, got {tuple(A.shape)}")
        if A.device != z.device:
            raise ValueError(f"A is on {A.device} but z is on {z.device}")


def sigreg_reference(z: torch.Tensor, A: torch.Tensor, t: torch.Tensor, phi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eager SIGReg. z (T,B,D) or (B,D), A (D,M) -> scalar."""
    x_t = (z @ A).unsqueeze(-1) * t  # (T, B, M, K)
    err = (x_t.cos().mean(-3) - phi).square() + x_t.sin().mean(-3).square()  # (T, M, K)
    return ((err @ weights) * z.size(-2)).mean()


class SIGReg(nn.Module):
    """``SIGReg(knots=17, num_proj=1024)``; ``forward(z (T,B,D), A=None, generator=None) -> scalar``.

    A fresh projection is drawn each call unless ``A`` (D, num_proj) is given; ``generator`` makes the draw reproducible.
    """

    def __init__(self, knots: int = 17, num_proj: int = 1024):
        super().__init__()
        self.num_proj = num_proj
        t, phi, weights = sigreg_knots(knots)
        self.register_buffer("t", t)
        self.register_buffer("phi", phi)
        self.register_buffer("weights", weights)

    def draw_projection(self, z: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return random_projection(z.size(-1), self.num_proj, device=z.device, generator=generator)

    def forward(self, z: torch.Tensor, A: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_sigreg_inputs(z, A)
        if A is None:
            A = self.draw_projection(z, generator)
        return sigreg_reference(z, A, self.t, self.phi, self.weights)
