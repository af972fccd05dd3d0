"""Triton CEM refit + Philox sampling kernel (kernels/elite_refit.py) under the Triton interpreter, on small shapes.

The refit is checked exactly against ``elite_refit_reference`` given the same candidates/costs; Philox normals cannot
match ``torch.randn`` bitwise, so sampling is checked for determinism, candidate 0 = mean, and distribution statistics
with a fixed seed and tolerances many standard errors wide.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels then run on CPU tensors

import math

import pytest
import torch

pytest.importorskip("triton")

from lewm_fast.backends import triton_available
from lewm_fast.ops import elite_refit
from lewm_fast.reference.cem import elite_refit_reference

if not triton_available(torch.device("cpu")) and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from lewm_fast.kernels.elite_refit import (  # noqa: E402
    elite_refit_triton,
    new_refit_buffers,
    philox_normal_,
    refit_and_sample_triton,
    sample_candidates_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cand = torch.randn(*shape, generator=g).to(DEVICE, dtype)
    costs = torch.rand(shape[:2], generator=g).to(DEVICE) * 10
    return cand, costs


def _assert_refit_matches(got, cand, costs, k, tol=1e-6):
    want = elite_refit_reference(cand.float(), costs, k)
    assert torch.equal(got.elite_idx, want.elite_idx)
    assert torch.equal(got.elite_costs, want.elite_costs)
    torch.testing.assert_close(got.mean.float(), want.mean, rtol=tol, atol=tol)
    torch.testing.assert_close(got.std.float(), want.std, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, k", [((1, 300, 5, 10), 30), ((3, 17, 2, 3), 5), ((2, 5, 1, 1), 5), ((2, 33, 3, 7), 2)])
def test_refit_matches_reference(shape, k):
    cand, costs = _problem(shape)
    out = elite_refit_triton(cand, costs, k)
    _assert_refit_matches(out, cand, costs, k)
    assert out.bad.tolist() == [0] * shape[0]


def test_refit_bf16_candidates_accumulate_in_fp32():
    cand, costs = _problem((2, 40, 3, 4), dtype=torch.bfloat16)
    out = elite_refit_triton(cand, costs, 8)
    assert out.mean.dtype == torch.bfloat16
    _assert_refit_matches(out, cand, costs, 8, tol=1e-2)


def test_ties_break_by_index_nan_and_inf_last():
    cand = torch.randn(1, 10, 2, 2, device=DEVICE)
    nan, inf = float("nan"), float("inf")
    costs = torch.tensor([[1.0, 0.5, nan, 0.5, -0.0, 0.5, inf, 0.0, nan, -1e30]], device=DEVICE)
    out = elite_refit_triton(cand, costs, 7)
    assert out.elite_idx.tolist() == elite_refit_reference(cand, costs, 7).elite_idx.tolist()
    assert out.elite_idx.tolist() == [[9, 4, 7, 1, 3, 5, 0]]
    assert out.bad.tolist() == [0]
    nine = elite_refit_triton(cand, costs, 9)
    assert nine.elite_idx.tolist() == [[9, 4, 7, 1, 3, 5, 0, 2, 6]]  # NaN counts as +inf, ties by index
    assert nine.bad.tolist() == [1]


def test_non_contiguous_inputs():
    base, costs_t = torch.randn(2, 9, 4, 6, device=DEVICE), torch.randn(9, 2, device=DEVICE)
    cand, costs = base.transpose(2, 3), costs_t.t()  # (2, 9, 6, 4) and (2, 9), both strided
    _assert_refit_matches(elite_refit_triton(cand, costs, 3), cand, costs, 3)
    sliced, sliced_costs = torch.randn(2, 20, 3, 2, device=DEVICE)[:, ::2], torch.randn(2, 20, device=DEVICE)[:, 1::2]
    _assert_refit_matches(elite_refit_triton(sliced, sliced_costs, 4), sliced, sliced_costs, 4)
    with pytest.raises(ValueError, match="costs"):
        elite_refit_triton(sliced, costs, 4)


def test_bad_flag_is_sticky_and_dispatch_raises():
    cand = torch.randn(2, 6, 2, 2, device=DEVICE)
    costs = torch.rand(2, 6, device=DEVICE)
    costs[1, 1:] = float("nan")
    out = elite_refit_triton(cand, costs, 3)
    assert out.bad.tolist() == [0, 1]
    elite_refit_triton(cand, torch.rand(2, 6, device=DEVICE), 3, out=out)  # a later finite refit keeps the flag
    assert out.bad.tolist() == [0, 1]
    with pytest.raises(ValueError, match="diverged"):
        elite_refit(cand, costs, 3, backend="triton")
    got = elite_refit(cand, costs.nan_to_num(5.0), 3, backend="triton")
    assert torch.equal(got.elite_idx, elite_refit_reference(cand, costs.nan_to_num(5.0), 3).elite_idx)


def test_fused_refit_sample_equals_refit_then_sample():
    cand, costs = _problem((2, 70, 5, 3), seed=1)
    seed = torch.tensor([1234], dtype=torch.long, device=DEVICE)
    fused = new_refit_buffers(cand, costs, 10)
    nxt = torch.empty_like(cand)
    refit_and_sample_triton(cand, costs, 10, fused, nxt, seed, key_offset=3)
    _assert_refit_matches(fused, cand, costs, 10)
    assert torch.equal(nxt[:, 0], fused.mean)
    separate = sample_candidates_triton(fused.mean, fused.std, torch.empty_like(cand), seed, 3)
    assert torch.equal(nxt, separate)
    with pytest.raises(ValueError, match="alias"):
        refit_and_sample_triton(cand, costs, 10, fused, cand, seed, 3)


def test_sampling_is_deterministic_per_key():
    mean, std = torch.randn(2, 4, 3, device=DEVICE), torch.rand(2, 4, 3, device=DEVICE) + 0.5
    seed = torch.tensor([7], dtype=torch.long, device=DEVICE)
    draw = lambda s, off: sample_candidates_triton(mean, std, torch.empty(2, 50, 4, 3, device=DEVICE), s, off)  # noqa: E731
    a = draw(seed, 0)
    assert torch.equal(a, draw(seed, 0))
    assert not torch.equal(a[:, 1:], draw(seed, 1)[:, 1:])
    assert not torch.equal(a[:, 1:], draw(seed + 1, 0)[:, 1:])
    assert torch.equal(draw(seed + 1, 0), draw(seed, 1))  # the key is seed + offset


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _assert_standard_normal(z: torch.Tensor):
    """z: >= 20k draws. Tolerances are >= 6 standard errors, and the seed is fixed, so this cannot flake."""
    z = z.double().flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 6 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 6 * math.sqrt(2.0 / n)
    for x in (-2.0, -1.0, -0.3, 0.0, 0.5, 1.5):
        p = _normal_cdf(x)
        assert abs(float((z <= x).double().mean()) - p) < 6 * math.sqrt(p * (1 - p) / n)
    assert abs(float((z[1:] * z[:-1]).mean())) < 6 / math.sqrt(n)  # neighbouring counters are uncorrelated


def test_sampled_candidates_are_mean_plus_std_normal():
    b, n, t, a = 2, 300, 5, 10
    mean = torch.randn(b, t, a, device=DEVICE)
    std = torch.rand(b, t, a, device=DEVICE) + 0.25
    out = sample_candidates_triton(mean, std, torch.empty(b, n, t, a, device=DEVICE), torch.tensor([99], device=DEVICE), 0)
    assert torch.equal(out[:, 0], mean)
    z = (out[:, 1:] - mean.unsqueeze(1)) / std.unsqueeze(1)
    _assert_standard_normal(z)
    # per-coordinate: each (env, t, a) column of 299 draws is centred on its own mean with its own scale
    col_mean = z.mean(1)
    assert float(col_mean.abs().max()) < 6 / math.sqrt(n - 1)


def test_philox_normal_fill():
    z = torch.empty(40000, device=DEVICE)
    philox_normal_(z, torch.tensor([5], device=DEVICE), 11)
    _assert_standard_normal(z)
