"""CEM elite selection + refit fused with the next iteration's candidate sampling (Triton).

One program per (environment, block of candidate rows):

* refit: the ``topk`` lowest costs of the environment (NaN counts as +inf, ties broken by index, like a stable sort),
  the gather of those elite action sequences, their mean and unbiased std (fp32 accumulation);
* sampling: ``candidates = mean + std * N(0, 1)`` with Philox normals (``tl.randn``), candidate 0 = mean.

Every program of an environment recomputes the (tiny) refit in registers, so the next candidates are sampled from the
fresh mean/std without a second launch or a grid-wide barrier; only the row-block-0 program writes the refit outputs.
Candidates are read from one buffer and written to another (ping-pong), because programs of an environment read the
elites while others write their rows. A non-finite elite cost is OR-ed into a per-environment int32 flag instead of
raising, so the planning loop never syncs with the host (the caller checks the flag once, after the plan).

Random stream: the Philox key of a sampling call is ``seed_buf[0] + key_offset`` (``seed_buf`` an int64 device tensor,
so a captured CUDA graph can advance it in place); counters are the flat element indices of the (B, N, W) output.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._launch import launch

_INT64_MAX = tl.constexpr(2**63 - 1)  # jit code may read only constexpr globals (the interpreter reads any)
_ROWS_PER_PROGRAM = 32


@triton.jit
def _elite_refit_tile(
    cand_ptr, costs_ptr, b, N, W, K, stride_cb, stride_cn, stride_cw, stride_kb, stride_kn,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Top-k lowest costs of environment ``b`` -> (elite index (BLOCK_K,), elite cost, mean (BLOCK_W,), std) in fp32."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_w = tl.arange(0, BLOCK_W)
    valid_n = offs_n < N
    cost = tl.load(costs_ptr + b * stride_kb + offs_n * stride_kn, mask=valid_n, other=0.0).to(tl.float32)
    cost = tl.where(cost != cost, float("inf"), cost)  # NaN sorts as +inf
    cost = tl.where(cost == 0.0, 0.0, cost)  # -0.0 and +0.0 compare equal, as in torch.sort
    # Order-preserving int32 image of the float, then (key, index) packed into one int64: a stable order.
    bits = cost.to(tl.int32, bitcast=True)
    key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (key32.to(tl.int64) << 32) | offs_n.to(tl.int64)
    key = tl.where(valid_n, key, _INT64_MAX)
    sel = tl.zeros([BLOCK_K], dtype=tl.int64)
    for j in range(K):
        smallest = tl.min(key, axis=0)
        sel = tl.where(offs_k == j, smallest & 0x7FFFFFFF, sel)  # the index half (N < 2**31)
        key = tl.where(key == smallest, _INT64_MAX, key)
    valid_k = offs_k < K
    elite_cost = tl.load(costs_ptr + b * stride_kb + sel * stride_kn, mask=valid_k, other=0.0).to(tl.float32)
    elite_cost = tl.where(elite_cost != elite_cost, float("inf"), elite_cost)
    tile_mask = valid_k[:, None] & (offs_w < W)[None, :]
    elites = tl.load(
        cand_ptr + b * stride_cb + sel[:, None] * stride_cn + offs_w[None, :] * stride_cw, mask=tile_mask, other=0.0
    ).to(tl.float32)
    mean = tl.sum(elites, axis=0) / K
    dev = tl.where(tile_mask, elites - mean[None, :], 0.0)
    std = tl.sqrt(tl.sum(dev * dev, axis=0) / (K - 1))
    return sel, elite_cost, mean, std


@triton.jit(do_not_specialize=["key_offset"])
def _elite_refit_sample_kernel(
    cand_ptr, costs_ptr, mean_ptr, std_ptr, idx_ptr, ecost_ptr, bad_ptr, out_ptr, seed_ptr, key_offset,
    N, W, K,
    stride_cb, stride_cn, stride_cw, stride_kb, stride_kn,
    REFIT: tl.constexpr, SAMPLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    rows_block = tl.program_id(1)
    offs_w = tl.arange(0, BLOCK_W)
    valid_w = offs_w < W
    if REFIT:
        sel, elite_cost, mean, std = _elite_refit_tile(
            cand_ptr, costs_ptr, b, N, W, K, stride_cb, stride_cn, stride_cw, stride_kb, stride_kn,
            BLOCK_N, BLOCK_K, BLOCK_W,
        )
        if rows_block == 0:
            offs_k = tl.arange(0, BLOCK_K)
            valid_k = offs_k < K
            tl.store(mean_ptr + b * W + offs_w, mean.to(mean_ptr.dtype.element_ty), mask=valid_w)
            tl.store(std_ptr + b * W + offs_w, std.to(std_ptr.dtype.element_ty), mask=valid_w)
            tl.store(idx_ptr + b * K + offs_k, sel, mask=valid_k)
            tl.store(ecost_ptr + b * K + offs_k, elite_cost.to(ecost_ptr.dtype.element_ty), mask=valid_k)
            finite = (elite_cost == elite_cost) & (tl.abs(elite_cost) < float("inf"))
            n_bad = tl.sum(tl.where(valid_k & ~finite, 1, 0), axis=0)
            prev = tl.load(bad_ptr + b)
            tl.store(bad_ptr + b, prev | (n_bad > 0).to(tl.int32))
    else:
        mean = tl.load(mean_ptr + b * W + offs_w, mask=valid_w, other=0.0).to(tl.float32)
        std = tl.load(std_ptr + b * W + offs_w, mask=valid_w, other=0.0).to(tl.float32)
    if SAMPLE:
        rows = rows_block * BLOCK_S + tl.arange(0, BLOCK_S)
        flat = (b * N + rows)[:, None] * W + offs_w[None, :]
        seed = tl.load(seed_ptr) + key_offset
        noise = tl.randn(seed, flat)
        sample = noise * std[None, :] + mean[None, :]
        sample = tl.where(rows[:, None] == 0, mean[None, :], sample)
        tl.store(out_ptr + flat, sample.to(out_ptr.dtype.element_ty), mask=(rows < N)[:, None] & valid_w[None, :])


@triton.jit(do_not_specialize=["key_offset"])
def _philox_normal_kernel(out_ptr, numel, seed_ptr, key_offset, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr) + key_offset
    tl.store(out_ptr + offs, tl.randn(seed, offs).to(out_ptr.dtype.element_ty), mask=offs < numel)


class RefitBuffers(NamedTuple):
    """Outputs of one refit: mean, std (B,T,A); elite_idx (B,k) int64; elite_costs (B,k); bad (B,) int32 flag."""

    mean: torch.Tensor
    std: torch.Tensor
    elite_idx: torch.Tensor
    elite_costs: torch.Tensor
    bad: torch.Tensor


def new_refit_buffers(candidates: torch.Tensor, costs: torch.Tensor, topk: int) -> RefitBuffers:
    """Zeroed output buffers for refits of candidates (B,N,T,A) with costs (B,N)."""
    b, _, t, a = candidates.shape
    return RefitBuffers(
        candidates.new_zeros(b, t, a),
        candidates.new_zeros(b, t, a),
        torch.zeros(b, topk, dtype=torch.long, device=candidates.device),
        costs.new_zeros(b, topk),
        torch.zeros(b, dtype=torch.int32, device=candidates.device),
    )


def _check_counter_range(numel: int) -> None:
    if numel >= 2**31:
        raise ValueError(f"Philox sampling counts elements in int32; {numel} elements is too many for one call")


def _launch(
    candidates: torch.Tensor,
    costs: Optional[torch.Tensor],
    topk: int,
    refit: Optional[RefitBuffers],
    out: Optional[torch.Tensor],
    seed_buf: Optional[torch.Tensor],
    key_offset: int,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
) -> None:
    b, n, t, a = candidates.shape
    w = t * a
    cand3 = candidates.reshape(b, n, w)  # a view for the usual contiguous buffers (strides are passed through)
    do_refit, do_sample = refit is not None, out is not None
    if do_sample:
        if not out.is_contiguous() or out.shape != candidates.shape:
            raise ValueError(f"out must be a contiguous {tuple(candidates.shape)} tensor, got {tuple(out.shape)}")
        _check_counter_range(out.numel())
    if do_refit:
        if costs.shape != (b, n):
            raise ValueError(f"costs must have shape (B, N)={(b, n)}, got {tuple(costs.shape)}")
        mean, std = refit.mean, refit.std
        idx, ecost, bad = refit.elite_idx, refit.elite_costs, refit.bad
        kb, kn = costs.stride()
    else:
        idx = ecost = bad = costs = candidates  # unused pointers when REFIT is off
        kb = kn = 0
    for name, buf, shape in (("mean", mean, (b, t, a)), ("std", std, (b, t, a)), ("elite_idx", idx, (b, topk)),
                             ("elite_costs", ecost, (b, topk)), ("bad", bad, (b,))):
        if do_refit or name in ("mean", "std"):
            if tuple(buf.shape) != shape or not buf.is_contiguous():
                raise ValueError(f"{name} must be a contiguous {shape} tensor, got {tuple(buf.shape)}")
    grid = (b, triton.cdiv(n, _ROWS_PER_PROGRAM) if do_sample else 1)
    block_w = triton.next_power_of_2(w)
    launch(
        _elite_refit_sample_kernel, grid,
        cand3, costs, mean, std, idx, ecost, bad,
        out if do_sample else candidates, seed_buf if do_sample else candidates, key_offset,
        n, w, topk,
        cand3.stride(0), cand3.stride(1), cand3.stride(2), kb, kn,
        REFIT=do_refit, SAMPLE=do_sample,
        BLOCK_N=triton.next_power_of_2(n), BLOCK_K=triton.next_power_of_2(max(topk, 2)),
        BLOCK_W=block_w, BLOCK_S=_ROWS_PER_PROGRAM,
        num_warps=4 if block_w <= 64 else 8,  # wide action blocks (Cube: 5 x 25): 8 warps keep registers < 128
    )


def elite_refit_triton(
    candidates: torch.Tensor, costs: torch.Tensor, topk: int, out: Optional[RefitBuffers] = None
) -> RefitBuffers:
    """candidates (B,N,T,A), costs (B,N) -> RefitBuffers; ``out.bad`` is OR-ed (not reset), nothing raises."""
    out = new_refit_buffers(candidates, costs, topk) if out is None else out
    _launch(candidates, costs, topk, out, None, None, 0)
    return out


def refit_and_sample_triton(
    candidates: torch.Tensor,
    costs: torch.Tensor,
    topk: int,
    refit_out: RefitBuffers,
    next_candidates: torch.Tensor,
    seed_buf: torch.Tensor,
    key_offset: int,
) -> None:
    """Refit from candidates/costs into ``refit_out`` and sample ``next_candidates`` (B,N,T,A) from the new
    mean/std with Philox key ``seed_buf[0] + key_offset``; candidate 0 = the new mean. One launch."""
    if next_candidates.data_ptr() == candidates.data_ptr():
        raise ValueError("next_candidates must not alias candidates (the elites are read while rows are written)")
    _launch(candidates, costs, topk, refit_out, next_candidates, seed_buf, key_offset)


def sample_candidates_triton(
    mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor, seed_buf: torch.Tensor, key_offset: int
) -> torch.Tensor:
    """mean, std (B,T,A) -> out (B,N,T,A) = mean + std * Philox normal, candidate 0 = mean."""
    _launch(out, None, 0, None, out, seed_buf, key_offset, mean=mean, std=std)
    return out


def philox_normal_(out: torch.Tensor, seed_buf: torch.Tensor, key_offset: int) -> torch.Tensor:
    """Fill a contiguous tensor with standard normals from Philox key ``seed_buf[0] + key_offset``."""
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    _check_counter_range(out.numel())
    block = 1024
    launch(_philox_normal_kernel, (triton.cdiv(out.numel(), block),), out, out.numel(), seed_buf, key_offset, BLOCK=block)
    return out
