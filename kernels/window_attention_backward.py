"""Backward of the predictor's window attention (Triton): d qkv from d out, for ``kernels.window_attention``.

The window is short (P + S <= a few keys), so nothing is saved but ``qkv``: each program recomputes the softmax
statistics of a query (online max / sum, and ``delta = sum_k p_k dO.v_k``) from q and the keys, and writes
``dq_i = scale sum_k p_ik (dO_i.v_k - delta_i) k_k`` for every queried token, then, per own key j,
``dk_j = scale sum_i p_ij (dO_i.v_j - delta_i) q_i`` and ``dv_j = sum_i p_ij dO_i`` over the queries that see it
(recomputing each query's statistics again: O(S^2 (P+S)) dot products of width dh per head, a few dozen). The shared
prefix is a constant (no gradient); queries of own tokens that are not queried get zero. One program per (row, block
of heads), float32 math, one launch.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launch
from .window_attention import window_kv, window_program


@triton.jit
def _query_stats(q, g, own, shared, s_qs, s_pp, offs, mask, P: tl.constexpr, INNER: tl.constexpr,
                 KEYS: tl.constexpr, BLOCK_H: tl.constexpr):
    """Softmax statistics of one (scaled) query over its first KEYS window keys: running max m, sum l and
    delta = sum_k p_k dO.v_k (g = dO), by the forward's online recurrence."""
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    d_i = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(KEYS):
        k, v = window_kv(own, shared, j, s_qs, s_pp, offs, mask, P, INNER)
        score = tl.sum(q * k, axis=1)
        m_new = tl.maximum(m_i, score)
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(score - m_new)
        l_i = l_i * alpha + p
        d_i = d_i * alpha + p * tl.sum(g * v, axis=1)
        m_i = m_new
    return m_i, l_i, d_i / l_i


@triton.jit
def _window_attention_backward_kernel(
    qkv_ptr, pre_ptr, grad_ptr, dqkv_ptr,
    heads, rows_per_prefix, scale,
    s_qm, s_qs, s_pb, s_pp, s_gm, s_gq, s_dm, s_ds,
    S: tl.constexpr, P: tl.constexpr, NQ: tl.constexpr, INNER: tl.constexpr, DH: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row, mask, offs, own, shared = window_program(qkv_ptr, pre_ptr, heads, rows_per_prefix, s_qm, s_pb,
                                                  DH, BLOCK_H, BLOCK_D)
    grad = grad_ptr + row * s_gm
    dst = dqkv_ptr + row * s_dm
    zero = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for t in tl.static_range(S - NQ):  # tokens that are not queried: no query gradient
        tl.store(dst + t * s_ds + offs, zero.to(dqkv_ptr.dtype.element_ty), mask=mask)
    for qi in tl.static_range(NQ):  # dq of each queried token
        i = S - NQ + qi
        q = tl.load(own + i * s_qs + offs, mask=mask, other=0.0).to(tl.float32) * scale
        g = tl.load(grad + qi * s_gq + offs, mask=mask, other=0.0).to(tl.float32)
        m_i, l_i, delta = _query_stats(q, g, own, shared, s_qs, s_pp, offs, mask, P, INNER, P + S - NQ + qi + 1,
                                       BLOCK_H)
        dq = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for j in tl.static_range(P + S - NQ + qi + 1):
            k, v = window_kv(own, shared, j, s_qs, s_pp, offs, mask, P, INNER)
            p = tl.exp(tl.sum(q * k, axis=1) - m_i) / l_i
            dq += (p * (tl.sum(g * v, axis=1) - delta))[:, None] * k
        tl.store(dst + i * s_ds + offs, (dq * scale).to(dqkv_ptr.dtype.element_ty), mask=mask)
    for jo in tl.static_range(S):  # dk, dv of each own key, from the queries that see it
        k_j, v_j = window_kv(own, shared, P + jo, s_qs, s_pp, offs, mask, P, INNER)
        dk = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for qi in tl.static_range(NQ):
            if S - NQ + qi >= jo:
                i = S - NQ + qi
                q = tl.load(own + i * s_qs + offs, mask=mask, other=0.0).to(tl.float32) * scale
                g = tl.load(grad + qi * s_gq + offs, mask=mask, other=0.0).to(tl.float32)
                m_i, l_i, delta = _query_stats(q, g, own, shared, s_qs, s_pp, offs, mask, P, INNER,
                                               P + S - NQ + qi + 1, BLOCK_H)
                p_j = tl.exp(tl.sum(q * k_j, axis=1) - m_i) / l_i
                dv += p_j[:, None] * g
                dk += (p_j * (tl.sum(g * v_j, axis=1) - delta))[:, None] * q  # q carries the scale
        tl.store(dst + jo * s_ds + INNER + offs, dk.to(dqkv_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + jo * s_ds + 2 * INNER + offs, dv.to(dqkv_ptr.dtype.element_ty), mask=mask)


def window_attention_backward(
    grad_out: torch.Tensor, qkv: torch.Tensor, heads: int, prefix_qkv: Optional[torch.Tensor] = None,
    num_queries: Optional[int] = None,
) -> torch.Tensor:
    """grad_out (M, q, heads*dh) of ``window_attention(qkv, heads, prefix_qkv, q)`` -> d qkv (M, S, 3*heads*dh) in
    qkv's dtype (float32 math). ``num_queries`` must equal grad_out's q (it is read from there)."""
    if qkv.dim() != 3 or qkv.stride(-1) != 1 or heads < 1 or qkv.shape[2] % (3 * heads):
        raise ValueError(f"qkv must be (M, S, 3*heads*dh), contiguous along its last dimension, got {tuple(qkv.shape)}")
    m, s, width = qkv.shape
    inner = width // 3
    dh = inner // heads
    nq = grad_out.shape[1]
    if grad_out.shape != (m, nq, inner) or not 1 <= nq <= s or (num_queries is not None and num_queries != nq):
        raise ValueError(f"grad_out must be (M={m}, q<={s}, {inner}), got {tuple(grad_out.shape)}")
    grad = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    p, rows_per_prefix, pre = 0, 1, qkv
    if prefix_qkv is not None:
        pre, p, rows_per_prefix = prefix_qkv, prefix_qkv.shape[1], m // prefix_qkv.shape[0]
    d_qkv = torch.empty(m, s, width, device=qkv.device, dtype=qkv.dtype)
    if m == 0:
        return d_qkv
    block_d = max(16, triton.next_power_of_2(dh))
    block_h = max(1, min(triton.next_power_of_2(heads), 2048 // block_d))
    grid = (m, triton.cdiv(heads, block_h))
    launch(
        _window_attention_backward_kernel, grid,
        qkv, pre, grad, d_qkv, heads, rows_per_prefix, dh ** -0.5,
        qkv.stride(0), qkv.stride(1), pre.stride(0), pre.stride(1), grad.stride(0), grad.stride(1),
        d_qkv.stride(0), d_qkv.stride(1),
        S=s, P=p, NQ=nq, INNER=inner, DH=dh, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4,
    )
    return d_qkv
