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
    which = resolve_backend(backend, candidates.device)
    if which == "cpu" and candidates.dtype in (torch.float32, torch.float64) and costs.dtype == candidates.dtype:
        return EliteRefit(*torch.ops.lewm_fast.elite_refit(candidates, costs, topk))
    return elite_refit_reference(candidates, costs, topk)
