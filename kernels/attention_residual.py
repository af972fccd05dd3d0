"""Predictor window attention fused as the prologue of ``attn.to_out`` with the AdaLN-zero gated residual as its
epilogue (Triton): ``x += gate * (attention(qkv) @ w_out^T + b_out)`` in place, one launch instead of two.

qkv (M, S, 3*heads*dh) is the ``to_qkv`` output (``[q | k | v]``, heads-major); prefix_qkv (B, P, 3*heads*dh) the
window tokens shared by each group of M // B rows, placed before the S own tokens; own token i attends to window
positions <= P+i (scale dh**-0.5, float32 online softmax). Only the last ``NQ`` own tokens are queried and updated:
x and gate are (M, NQ, N) (strided views such as x[:, -1:]).

Each program owns BLOCK_M query rows and BLOCK_N output columns and walks the heads: head h's attention output
(BLOCK_M, dh) is computed in registers from the rows' q and the keys / values of their windows, then multiplied by
the (dh, BLOCK_N) slice of w_out^T, so the attention output is never written. Programs of other column tiles
recompute the attention of their rows: a few thousand multiply-adds per row against ~200k for the projection.
Precision of float32 operands as in ``gated_residual``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._launch import PlanCache, call_signature, fills_half_the_sms, interpreted, launch, multiprocessor_count
from ._tile_matmul import SMALL_ROWS, dot_precision, single_pass_tensor_cores


@triton.jit
def _attention_residual_kernel(
    qkv_ptr, pre_ptr, w_ptr, bias_ptr, gate_ptr, x_ptr,
    R, N, scale, rows_per_prefix,
    s_qm, s_qs, s_pb, s_pp, s_wn, s_gm, s_gs, s_xm, s_xs,
    S: tl.constexpr, P: tl.constexpr, NQ: tl.constexpr, HEADS: tl.constexpr, DH: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    mmask = rm < R
    nmask = rn < N
    dmask = rd < DH
    row = (rm // NQ).to(tl.int64)  # candidate row of qkv
    qi = rm % NQ  # which of the last NQ own tokens
    last_key = P + S - NQ + qi  # window position of the query: keys 0..last_key are visible
    own = qkv_ptr + row * s_qm
    shared = pre_ptr + (row // rows_per_prefix) * s_pb
    qmask = mmask[:, None] & dmask[None, :]
    inner = HEADS * DH
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for h in range(HEADS):
        cols = h * DH + rd
        q = tl.load(own[:, None] + ((S - NQ + qi) * s_qs)[:, None] + cols[None, :], mask=qmask, other=0.0)
        q = q.to(tl.float32) * scale
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        att = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j in tl.static_range(P + S):
            if j < P:
                kv = shared + j * s_pp + inner
            else:
                kv = own + (j - P) * s_qs + inner
            visible = mmask & (j <= last_key)
            kvmask = visible[:, None] & dmask[None, :]
            k = tl.load(kv[:, None] + cols[None, :], mask=kvmask, other=0.0).to(tl.float32)
            v = tl.load(kv[:, None] + inner + cols[None, :], mask=kvmask, other=0.0).to(tl.float32)
            score = tl.where(visible, tl.sum(q * k, axis=1), float("-inf"))
            m_new = tl.maximum(m_i, score)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet (masked rows)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(score - m_safe)
            l_i = l_i * alpha + p
            att = att * alpha[:, None] + p[:, None] * v
            m_i = m_new
        att = att / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        w = tl.load(w_ptr + rn.to(tl.int64)[None, :] * s_wn + cols[:, None], mask=dmask[:, None] & nmask[None, :],
                    other=0.0)
        if UPCAST:
            acc = tl.dot(att, w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(att.to(w.dtype), w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    xr = (rm // NQ).to(tl.int64)
    xq = (rm % NQ).to(tl.int64)
    mask = mmask[:, None] & nmask[None, :]
    gate = tl.load(gate_ptr + (xr * s_gm + xq * s_gs)[:, None] + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    x_ptrs = x_ptr + (xr * s_xm + xq * s_xs)[:, None] + rn[None, :]
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    tl.store(x_ptrs, (x.to(tl.float32) + gate * acc).to(x.dtype), mask=mask)


def tiles(rows: int, n: int, dtype: torch.dtype, tensor_cores: bool = False, sm_count: Optional[int] = None) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): 16 x 32 tiles up to ``SMALL_ROWS`` query rows (a one-env plan fills
    the SMs) and for float32 operands at any size (the unrolled key loop keeps every key / value slice live: larger
    fp32 tiles spill); 64 x 64 tiles for 16-bit operands above.

    ``tensor_cores`` (bf16 / fp16, or single-pass TF32 dots; 3xTF32's split operands spill) up to ``SMALL_ROWS``
    rows: 32 x 64 tiles where they still give at least half of the ``sm_count`` SMs (H100's 132 when unknown) a
    program. Each program recomputes its rows' attention for its column tile, so wider column tiles recompute it
    fewer times; at one environment's 900 rows the cost model finds them 1.6x faster than 16 x 32 (docs/gpu.md
    "Step 3"); at 300 rows too few programs remain."""
    if rows <= SMALL_ROWS and tensor_cores and fills_half_the_sms(triton.cdiv(rows, 32) * triton.cdiv(n, 64), sm_count):
        return 32, 64, 4, 2
    if rows <= SMALL_ROWS or dtype == torch.float32:
        return 16, 32, 4, 2
    return 64, 64, 8, 2


def attention_residual(
    x: torch.Tensor,
    qkv: torch.Tensor,
    heads: int,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    gate: torch.Tensor,
    prefix_qkv: Optional[torch.Tensor] = None,
    precision: str = "ieee",
) -> torch.Tensor:
    """In place ``x += gate * (window_attention(qkv, heads, prefix_qkv, NQ) @ weight^T + bias)``; return x.

    x, gate (M, NQ, N) with NQ <= S the queried last own tokens; qkv (M, S, 3*heads*dh); prefix_qkv (B, P, 3*heads*dh)
    with B dividing M, or None; weight (N, heads*dh) row-major in qkv's dtype. Inference only (no autograd). Checks and tiles are derived once per argument signature (``PlanCache``).
    """
    plan = _PLANS.get(call_signature(x, qkv, heads, weight, bias, gate, prefix_qkv, precision),
                      lambda: _plan(x, qkv, heads, weight, bias, gate, prefix_qkv, precision))
    return plan(x, qkv, weight, bias, gate, prefix_qkv)


_PLANS = PlanCache()


def _plan(x, qkv, heads, weight, bias, gate, prefix_qkv, precision: str) -> Callable[..., torch.Tensor]:
    """Validate an ``attention_residual`` call; -> ``run(x, qkv, weight, bias, gate, prefix_qkv)`` for every call of
    its signature."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3 or not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError("x (M, NQ, N) and qkv (M, S, 3*heads*dh) must be 3-d tensors")
    m, s, width = qkv.shape
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or width % (3 * heads):
        raise ValueError(f"heads must be a positive int dividing qkv's last dimension / 3 ({width}), got {heads}")
    inner = width // 3
    n = x.shape[2]
    nq = x.shape[1]
    if x.shape[0] != m or not 1 <= nq <= s or gate.shape != x.shape:
        raise ValueError(f"x and gate must be (M={m}, NQ<={s}, N), got {tuple(x.shape)} and {tuple(gate.shape)}")
    if weight.shape != (n, inner) or weight.dtype != qkv.dtype:
        raise ValueError(f"weight must be ({n}, {inner}) in qkv's dtype {qkv.dtype}, "
                         f"got {tuple(weight.shape)} {weight.dtype}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("x", x), ("qkv", qkv), ("gate", gate), ("weight", weight), ("prefix_qkv", prefix_qkv)):
        if t is not None and (t.stride(-1) != 1 or t.device != x.device):
            raise ValueError(f"{name} must be on x's device and contiguous along its last dimension")
    p, rows_per_prefix, pre = 0, 1, qkv
    if prefix_qkv is not None:
        if prefix_qkv.dim() != 3 or prefix_qkv.shape[2] != width or prefix_qkv.shape[0] < 1 or m % prefix_qkv.shape[0]:
            raise ValueError(f"prefix_qkv must be (B, P, {width}) with B dividing M={m}, got {tuple(prefix_qkv.shape)}")
        if prefix_qkv.dtype != qkv.dtype:
            raise ValueError("prefix_qkv must share qkv's dtype")
        pre, p, rows_per_prefix = prefix_qkv, prefix_qkv.shape[1], m // prefix_qkv.shape[0]
    rows = m * nq
    if rows == 0:
        return lambda x, qkv, weight, bias, gate, prefix_qkv: x
    dh = inner // heads
    upcast = interpreted(x.device)  # CPU tensors: the Triton interpreter (exact fp32 dots only)
    dot = dot_precision(qkv.dtype, precision)
    block_m, block_n, warps, stages = tiles(rows, n, qkv.dtype, single_pass_tensor_cores(qkv.dtype, dot),
                                            multiprocessor_count(x.device))
    block_n = max(16, min(block_n, triton.next_power_of_2(n)))
    block_d = max(16, triton.next_power_of_2(dh))
    grid = (triton.cdiv(n, block_n), triton.cdiv(rows, block_m))
    ints = (rows, n, dh ** -0.5, rows_per_prefix, qkv.stride(0), qkv.stride(1), pre.stride(0), pre.stride(1),
            weight.stride(0), gate.stride(0), gate.stride(1), x.stride(0), x.stride(1))
    consts = dict(S=s, P=p, NQ=nq, HEADS=heads, DH=dh, HAS_BIAS=bias is not None, PRECISION=dot, UPCAST=upcast,
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages)

    def run(x, qkv, weight, bias, gate, prefix_qkv):
        launch(_attention_residual_kernel, grid, qkv, qkv if prefix_qkv is None else prefix_qkv, weight,
               bias if bias is not None else weight, gate, x, *ints, **consts)
        return x

    return run
