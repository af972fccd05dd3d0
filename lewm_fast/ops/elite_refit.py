"""CEM elite selection + refit: one dispatch point over the reference, C++ (``csrc/elite_refit.cpp``) and
Triton (``kernels/``) implementations."""

from __future__ import annotations

import torch

from .._validation import check_positive_int, check_tensor
from ..backends import csrc_available, resolve_backend
from ..reference.cem import EliteRefit, elite_refit_reference

if csrc_available():

    @torch.library.register_fake("lewm_fast::elite_refit")
    def _elite_refit_fake(candidates, costs, topk):
        b, _, t, a = candidates.shape
        return (
            candidates.new_empty(b, t, a),
            candidates.new_empty(b, t, a),
            candidates.new_empty(b, topk, dtype=torch.long),
            costs.new_empty(b, topk),
        )


def elite_refit(candidates: torch.Tensor, costs: torch.Tensor, topk: int, backend: str = "auto") -> EliteRefit:
    """candidates (B,N,T,A), costs (B,N) -> EliteRefit(mean, unbiased std (B,T,A), elite_idx (B,k), elite_costs (B,k)).

    Elites are the ``topk`` lowest costs in stable order; NaN counts as +inf and a non-finite elite raises ValueError.
    """
    check_tensor(candidates, "candidates", ndim=4)
    check_tensor(costs, "costs", ndim=2)
    check_positive_int(topk, "topk", 2)
    if costs.shape != candidates.shape[:2]:
        raise ValueError(f"costs must have shape (B,N)={tuple(candidates.shape[:2])}, got {tuple(costs.shape)}")
    if topk > candidates.shape[1]:
        raise ValueError(f"topk ({topk}) must be <= number of candidates ({candidates.shape[1]})")
    return elite_refit_resolved(candidates, costs, topk, resolve_backend(backend, candidates.device))


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def elite_refit_resolved(candidates: torch.Tensor, costs: torch.Tensor, topk: int, which: str) -> EliteRefit:
    """``elite_refit`` for a backend already resolved by ``resolve_backend`` and arguments already checked (planning
    loops call this once per iteration). Dtypes a fast backend does not cover fall back to the reference."""
    if which == "cpu" and candidates.dtype in (torch.float32, torch.float64) and costs.dtype == candidates.dtype:
        return EliteRefit(*torch.ops.lewm_fast.elite_refit(candidates, costs, topk))
    if which == "triton" and candidates.dtype in _TRITON_DTYPES and costs.dtype in _TRITON_DTYPES:
        from ..kernels.cem_refit import elite_refit_triton

        out = elite_refit_triton(candidates, costs, topk)
        if bool(out.bad.any()):
            raise ValueError(_diverged_message(topk, costs))
        return EliteRefit(out.mean, out.std, out.elite_idx, out.elite_costs)
    return elite_refit_reference(candidates, costs, topk)


def _diverged_message(topk: int, costs: torch.Tensor) -> str:
    """The error for fewer than ``topk`` finite costs in some environment (costs (B,N))."""
    bad = int((~torch.isfinite(costs)).sum(1).max())
    return (
        f"fewer than topk={topk} candidates have a finite cost ({bad} of {costs.shape[1]} are NaN/inf in some "
        "environment): the model diverged; NaN/inf candidates are never used as elites"
    )
