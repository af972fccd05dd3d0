"""Batched predictor attention (Triton): causal multi-head attention over the LeWM predictor's short window
(<= num_frames tokens) for every candidate at once, fused with the QKV split and the output layout.

Reads the ``to_qkv`` GEMM output (M, S, 3*heads*dh) as it is (``[q | k | v]``, heads-major inside each part, the
layout of ``chunk(3)`` + ``view(heads, dh)``) and writes (M, num_queries, heads*dh), ready for ``to_out``. An optional
``prefix_qkv`` (B, P, 3*heads*dh) holds window tokens shared by each group of M // B consecutive rows (the part of the
window that is the same for all candidates of an environment); they sit before the row's own S tokens. Own token i
(window position P+i) attends to window positions <= P+i with scale dh**-0.5, float32 online softmax.

One program per (row, block of heads); the window length is a compile-time constant (a few variants per model).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launch


@triton.jit
def window_kv(own, shared, j: tl.constexpr, s_qs, s_pp, offs, mask, P: tl.constexpr, INNER: tl.constexpr):
    """Key and value (float32, BLOCK_H x BLOCK_D) of window position ``j``: shared prefix token ``j`` when j < P,
    else own token ``j - P`` (a token's value sits INNER after its key)."""
    if j < P:
        kv = shared + j * s_pp + INNER
    else:
        kv = own + (j - P) * s_qs + INNER
    k = tl.load(kv + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(kv + INNER + offs, mask=mask, other=0.0).to(tl.float32)
    return k, v


@triton.jit
def window_program(qkv_ptr, pre_ptr, heads, rows_per_prefix, s_qm, s_pb, DH: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """What a (row, block of heads) program of the window-attention kernels works on: its row, the mask and offsets
    of its heads' (BLOCK_H, BLOCK_D) slices, and the row's own tokens and shared prefix."""
    row = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ds = tl.arange(0, BLOCK_D)
    mask = (hs < heads)[:, None] & (ds < DH)[None, :]
    offs = hs[:, None] * DH + ds[None, :]
    return row, mask, offs, qkv_ptr + row * s_qm, pre_ptr + (row // rows_per_prefix) * s_pb


@triton.jit
def _window_attention_kernel(
    qkv_ptr, pre_ptr, out_ptr,
    heads, rows_per_prefix, scale,
    s_qm, s_qs, s_pb, s_pp, s_om, s_oq,
    S: tl.constexpr, P: tl.constexpr, NQ: tl.constexpr, INNER: tl.constexpr, DH: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row, mask, offs, own, shared = window_program(qkv_ptr, pre_ptr, heads, rows_per_prefix, s_qm, s_pb,
                                                  DH, BLOCK_H, BLOCK_D)
    for qi in tl.static_range(NQ):
        q = tl.load(own + (S - NQ + qi) * s_qs + offs, mask=mask, other=0.0).to(tl.float32) * scale
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for j in tl.static_range(P + S - NQ + qi + 1):
            k, v = window_kv(own, shared, j, s_qs, s_pp, offs, mask, P, INNER)
            score = tl.sum(q * k, axis=1)
            m_new = tl.maximum(m_i, score)
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(score - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * v
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + row * s_om + qi * s_oq + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def window_attention(
    qkv: torch.Tensor, heads: int, prefix_qkv: Optional[torch.Tensor] = None, num_queries: Optional[int] = None
) -> torch.Tensor:
    """qkv (M, S, 3*heads*dh) [+ prefix_qkv (B, P, 3*heads*dh)] -> (M, num_queries, heads*dh) in qkv's dtype: the
    attention output of the last ``num_queries`` (default S) own tokens. Inference only (no autograd)."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        raise ValueError(f"qkv must be a (M, S, 3*heads*dh) tensor, got {getattr(qkv, 'shape', type(qkv).__name__)}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or qkv.shape[2] % (3 * heads):
        raise ValueError(f"heads must be a positive int dividing qkv's last dimension / 3 ({qkv.shape[2]}), got {heads}")
    if qkv.stride(-1) != 1:
        raise ValueError(f"qkv must be contiguous along its last dimension, got strides {qkv.stride()}")
    m, s, width = qkv.shape
    inner = width // 3
    dh = inner // heads
    nq = s if num_queries is None else num_queries
    if isinstance(nq, bool) or not isinstance(nq, int) or not 1 <= nq <= s:
        raise ValueError(f"num_queries must be an int in [1, S={s}], got {num_queries}")
    p = 0
    rows_per_prefix = 1
    pre = qkv
    if prefix_qkv is not None:
        if prefix_qkv.dim() != 3 or prefix_qkv.shape[2] != width or prefix_qkv.shape[0] < 1 or m % prefix_qkv.shape[0]:
            raise ValueError(f"prefix_qkv must be (B, P, {width}) with B dividing M={m}, got {tuple(prefix_qkv.shape)}")
        if prefix_qkv.dtype != qkv.dtype or prefix_qkv.device != qkv.device:
            raise ValueError("prefix_qkv must share qkv's dtype and device")
        if prefix_qkv.stride(-1) != 1:
            raise ValueError(f"prefix_qkv must be contiguous along its last dimension, got strides {prefix_qkv.stride()}")
        pre = prefix_qkv
        p = prefix_qkv.shape[1]
        rows_per_prefix = m // prefix_qkv.shape[0]
    out = torch.empty(m, nq, inner, device=qkv.device, dtype=qkv.dtype)
    if m == 0:
        return out
    block_d = max(16, triton.next_power_of_2(dh))
    block_h = max(1, min(triton.next_power_of_2(heads), 2048 // block_d))
    grid = (m, triton.cdiv(heads, block_h))
    launch(
        _window_attention_kernel, grid,
        qkv, pre, out, heads, rows_per_prefix, dh ** -0.5,
        qkv.stride(0), qkv.stride(1), pre.stride(0), pre.stride(1), out.stride(0), out.stride(1),
        S=s, P=p, NQ=nq, INNER=inner, DH=dh, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4,
    )
    return out
