"""Reference SIGReg against an independent float64 evaluation of the Epps-Pulley statistic and its analytic gradient."""

import math

import pytest
import torch

from lewm_fast.reference.sigreg import SIGReg, random_projection, sigreg_knots, sigreg_reference


def epps_pulley_direct(z: torch.Tensor, A: torch.Tensor, knots: int = 17) -> torch.Tensor:
    """float64, via the empirical characteristic function: stat = B * 2 * trapz(|ecf(t) - phi(t)|^2 phi(t), t in [0,3])."""
    z, A = z.double(), A.double()
    t = torch.linspace(0, 3, knots, dtype=torch.float64)
    phi = torch.exp(-t**2 / 2)
    x = torch.einsum("tbd,dm->tbm", z, A)
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(dim=1)  # (T, M, K) complex
    integrand = (ecf - phi).abs() ** 2 * phi
    stat = z.shape[1] * 2 * torch.trapezoid(integrand, t, dim=-1)  # (T, M)
    return stat.mean()


def analytic_grad(z: torch.Tensor, A: torch.Tensor, knots: int = 17) -> torch.Tensor:
    """SPEC §2: d stat/d x_b = 2 sum_k w_k t_k [s_k cos(t_k x_b) - (c_k - phi_k) sin(t_k x_b)], / (T M), then @ A^T."""
    t, phi, w = sigreg_knots(knots, dtype=torch.float64)
    z, A = z.double(), A.double()
    T, _, _ = z.shape
    M = A.shape[1]
    x = z @ A  # (T, B, M)
    tx = x.unsqueeze(-1) * t
    c, s = tx.cos().mean(1, keepdim=True), tx.sin().mean(1, keepdim=True)  # (T, 1, M, K)
    g = 2 * (w * t * (s * tx.cos() - (c - phi) * tx.sin())).sum(-1) / (T * M)
    return g @ A.T


@pytest.mark.parametrize("shape", [(4, 16, 8), (1, 33, 5), (2, 7, 12)])
def test_value_matches_direct_evaluation(shape):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    A = random_projection(shape[-1], 64, generator=g).double()
    t, phi, w = sigreg_knots(dtype=torch.float64)
    torch.testing.assert_close(sigreg_reference(z, A, t, phi, w), epps_pulley_direct(z, A), rtol=1e-10, atol=1e-12)


def test_gradient_matches_analytic_formula():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 20, 6, generator=g, dtype=torch.float64, requires_grad=True)
    A = random_projection(6, 40, generator=g).double()
    t, phi, w = sigreg_knots(dtype=torch.float64)
    sigreg_reference(z, A, t, phi, w).backward()
    torch.testing.assert_close(z.grad, analytic_grad(z.detach(), A), rtol=1e-10, atol=1e-12)


def test_gaussian_input_scores_lower_than_collapsed_input():
    g = torch.Generator().manual_seed(3)
    gauss = torch.randn(2, 512, 16, generator=g)
    collapsed = gauss * 0.05 + 1.0
    mod = SIGReg(num_proj=128)
    A = mod.draw_projection(gauss, torch.Generator().manual_seed(0))
    assert mod(gauss, A=A) < 0.1 * mod(collapsed, A=A)


def test_knots_and_weights():
    t, phi, w = sigreg_knots(17)
    dt = 3 / 16
    assert t[0] == 0 and math.isclose(float(t[-1]), 3.0)
    torch.testing.assert_close(phi, torch.exp(-t**2 / 2))
    torch.testing.assert_close(w[0], torch.tensor(dt))
    torch.testing.assert_close(w[5], 2 * dt * phi[5])


def test_projection_stream_matches_public_implementation():
    """With torch.manual_seed and no generator, A is drawn exactly like `torch.randn(D, M)` then column-normalised."""
    torch.manual_seed(7)
    a = random_projection(12, 30)
    torch.manual_seed(7)
    b = torch.randn(12, 30)
    torch.testing.assert_close(a, b / b.norm(dim=0))
    torch.testing.assert_close(a.norm(dim=0), torch.ones(30))


def test_generator_makes_the_module_reproducible():
    z = torch.randn(2, 10, 8)
    mod = SIGReg(num_proj=32)
    v1 = mod(z, generator=torch.Generator().manual_seed(5))
    v2 = mod(z, generator=torch.Generator().manual_seed(5))
    assert torch.equal(v1, v2)


def test_bad_inputs():
    mod = SIGReg(num_proj=8)
    with pytest.raises(ValueError, match="dimensions"):
        mod(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="D=4"):
        mod(torch.randn(2, 3, 4), A=torch.randn(5, 8))
    with pytest.raises(ValueError, match="empty"):
        mod(torch.randn(2, 0, 4))
    with pytest.raises(TypeError, match="floating"):
        mod(torch.ones(2, 3, 4, dtype=torch.int64))
