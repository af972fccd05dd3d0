"""The C++ elite refit (csrc/elite_refit.cpp) against the reference, through the dispatch layer."""

import pytest
import torch

from lewm_fast.backends import csrc_available
from lewm_fast.ops import elite_refit
from lewm_fast.reference.cem import elite_refit_reference

pytestmark = pytest.mark.skipif(not csrc_available(), reason="C++ extension lewm_fast._C not built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, k", [((1, 300, 5, 10), 30), ((3, 17, 2, 3), 5), ((2, 5, 1, 1), 5)])
def test_matches_reference(shape, k, dtype):
    g = torch.Generator().manual_seed(0)
    cand = torch.randn(*shape, generator=g, dtype=dtype)
    costs = torch.randn(shape[:2], generator=g, dtype=dtype)
    got = elite_refit(cand, costs, k, backend="cpu")
    want = elite_refit_reference(cand, costs, k)
    assert torch.equal(got.elite_idx, want.elite_idx)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for name in ("mean", "std", "elite_costs"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), **tol)


def test_ties_break_by_index_and_nan_is_last():
    cand = torch.randn(1, 8, 2, 2)
    costs = torch.tensor([[1.0, 0.5, float("nan"), 0.5, 0.2, 0.5, 3.0, -1e30]])
    got = elite_refit(cand, costs, 4, backend="cpu")
    assert got.elite_idx.tolist() == elite_refit_reference(cand, costs, 4).elite_idx.tolist()


def test_non_contiguous_inputs():
    base = torch.randn(2, 9, 4, 6)
    cand = base.transpose(2, 3)  # (2, 9, 6, 4), non-contiguous
    costs = torch.randn(9, 2).t()
    got = elite_refit(cand, costs, 3, backend="cpu")
    want = elite_refit_reference(cand, costs, 3)
    torch.testing.assert_close(got.mean, want.mean)
    torch.testing.assert_close(got.std, want.std)


def test_diverged_model_raises():
    costs = torch.full((1, 6), float("nan"))
    costs[0, 0] = 1.0
    with pytest.raises(ValueError, match="diverged"):
        elite_refit(torch.randn(1, 6, 2, 2), costs, 3, backend="cpu")


def test_bad_arguments():
    with pytest.raises(ValueError, match="topk"):
        elite_refit(torch.randn(1, 4, 2, 2), torch.randn(1, 4), 5)
    with pytest.raises(ValueError, match="costs must have shape"):
        elite_refit(torch.randn(1, 4, 2, 2), torch.randn(1, 5), 2)
    with pytest.raises(ValueError, match="4 dimensions"):
        elite_refit(torch.randn(4, 2, 2), torch.randn(1, 4), 2)
