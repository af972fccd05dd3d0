"""CEM elite selection + refit, and the candidate sampling fused with it: one dispatch point over the reference, C++
(``csrc/elite_refit.cpp``) and Triton (``kernels/elite_refit.py``) implementations.

``elite_refit`` is the checked public op; ``elite_refit_resolved`` / ``elite_refit_into`` serve planning loops that
resolved the backend once. The Philox functions (``sample_candidates_``, ``refit_and_sample_``, ``philox_normal_``)
are Triton only: the random stream lives in an int64 device tensor ``seed_buf``, and call ``key_offset`` draws with
key ``seed_buf[0] + key_offset`` (a captured CUDA graph advances it in place). On meta tensors inside
``ops.launches.record_launches`` the Triton paths record their launches instead of running them.
"""

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
        from ..kernels.elite_refit import elite_refit_triton

        out = elite_refit_triton(candidates, costs, topk)
        if out.bad.device.type != "meta" and bool(out.bad.any()):  # on meta nothing ran (launches are recorded)
            raise ValueError(_diverged_message(topk, costs))
        return EliteRefit(out.mean, out.std, out.elite_idx, out.elite_costs)
    return elite_refit_reference(candidates, costs, topk)


def elite_refit_into(
    candidates: torch.Tensor, costs: torch.Tensor, topk: int, out: EliteRefit, bad: torch.Tensor, which: str
) -> None:
    """``elite_refit_resolved`` written into ``out`` (mean, std (B,T,A) float32, elite_idx (B,k), elite_costs (B,k)).
    Triton ORs a divergence (a non-finite elite) into ``bad`` (B,) int32 without a host sync; the other backends
    raise ValueError at once."""
    if which == "triton":
        from ..kernels.elite_refit import RefitBuffers, elite_refit_triton

        elite_refit_triton(candidates, costs, topk, out=RefitBuffers(*out, bad))
        return
    for dst, src in zip(out, elite_refit_resolved(candidates, costs, topk, which)):
        dst.copy_(src)


def refit_and_sample_(
    candidates: torch.Tensor,
    costs: torch.Tensor,
    topk: int,
    out: EliteRefit,
    bad: torch.Tensor,
    next_candidates: torch.Tensor,
    seed_buf: torch.Tensor,
    key_offset: int,
) -> None:
    """Triton: ``elite_refit_into`` and, in the same launch, ``next_candidates`` (B,N,T,A) sampled from the new
    mean/std (candidate 0 = the mean). ``next_candidates`` must not alias ``candidates``."""
    from ..kernels.elite_refit import RefitBuffers, refit_and_sample_triton

    refit_and_sample_triton(candidates, costs, topk, RefitBuffers(*out, bad), next_candidates, seed_buf, key_offset)


def sample_candidates_(
    out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seed_buf: torch.Tensor, key_offset: int
) -> torch.Tensor:
    """Triton: out (B,N,T,A) <- mean + std * Philox normals, candidate 0 = mean; mean, std (B,T,A)."""
    from ..kernels.elite_refit import sample_candidates_triton

    return sample_candidates_triton(mean, std, out, seed_buf, key_offset)


def philox_normal_(out: torch.Tensor, seed_buf: torch.Tensor, key_offset: int) -> torch.Tensor:
    """Triton: fill a contiguous ``out`` with standard Philox normals."""
    from ..kernels.elite_refit import philox_normal_ as fill

    return fill(out, seed_buf, key_offset)


def _diverged_message(topk: int, costs: torch.Tensor) -> str:
    """The error for fewer than ``topk`` finite costs in some environment (costs (B,N))."""
    bad = int((~torch.isfinite(costs)).sum(1).max())
    return (
        f"fewer than topk={topk} candidates have a finite cost ({bad} of {costs.shape[1]} are NaN/inf in some "
        "environment): the model diverged; NaN/inf candidates are never used as elites"
    )
