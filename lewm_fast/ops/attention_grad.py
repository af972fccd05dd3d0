"""Window attention as an autograd Function: a fast forward (the C++ or Triton kernel) with an analytic backward
(the C++ kernel ``torch.ops.lewm_fast.window_attention_backward`` on CPU, the Triton kernel of
``kernels/window_attention_backward.py`` on the Triton backend; ``window_attention_backward`` below, in torch ops, is
their reference and the default).

The window is short (at most the predictor's ``num_frames`` keys plus a shared prefix), so the backward recomputes the
softmax probabilities from the saved ``qkv`` instead of keeping them (they cost one (M, heads, q, keys) tensor, less
than the inputs themselves) and applies the softmax-attention gradient in float32 with batched GEMMs:
``dV = P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = scale * dS K``, ``dK = scale * dS^T Q``. The shared
prefix's keys/values are constants of the plan (no gradient reaches them).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

AttentionForward = Callable[[torch.Tensor, int, Optional[torch.Tensor], Optional[int]], torch.Tensor]
"""A window attention forward: (qkv, heads, prefix_qkv, num_queries) -> (M, num_queries, heads*dh)."""
AttentionBackward = Callable[[torch.Tensor, torch.Tensor, int, Optional[torch.Tensor], int], torch.Tensor]
"""Its backward: (grad_out, qkv, heads, prefix_qkv, num_queries) -> d qkv (``window_attention_backward``)."""


def _split(
    qkv: torch.Tensor, heads: int, prefix_qkv: Optional[torch.Tensor], nq: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """float32 q (M, h, nq, dh), k / v (M, h, P+S, dh) with the prefix repeated per group, the causal mask (nq, P+S)
    and P."""
    m, s, width = qkv.shape
    inner = width // 3
    dh = inner // heads
    q, k, v = qkv[:, s - nq:, :inner], qkv[:, :, inner:2 * inner], qkv[:, :, 2 * inner:]
    p = 0
    if prefix_qkv is not None:
        p = prefix_qkv.shape[1]
        rep = m // prefix_qkv.shape[0]
        k = torch.cat([prefix_qkv[:, :, inner:2 * inner].repeat_interleave(rep, 0), k], dim=1)
        v = torch.cat([prefix_qkv[:, :, 2 * inner:].repeat_interleave(rep, 0), v], dim=1)
    heads_first = lambda t: t.float().unflatten(-1, (heads, dh)).transpose(1, 2)  # noqa: E731
    keys = p + s
    qpos = torch.arange(keys - nq, keys, device=qkv.device)
    mask = torch.arange(keys, device=qkv.device)[None, :] <= qpos[:, None]
    return heads_first(q), heads_first(k), heads_first(v), mask, p


def window_attention_backward(
    grad_out: torch.Tensor, qkv: torch.Tensor, heads: int, prefix_qkv: Optional[torch.Tensor], nq: int
) -> torch.Tensor:
    """grad_out (M, nq, heads*dh) of ``PredictorOps.window_attention(qkv, heads, prefix_qkv, nq)`` -> d qkv (M, S,
    3*heads*dh) in qkv's dtype (queries of the first S - nq tokens get zero)."""
    m, s, width = qkv.shape
    inner = width // 3
    q, k, v, mask, p = _split(qkv, heads, prefix_qkv, nq)
    scale = q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-1, -2)).mul_(scale).masked_fill_(~mask, float("-inf"))
    probs = scores.softmax(-1)  # (M, h, nq, keys)
    d_o = grad_out.float().unflatten(-1, (heads, inner // heads)).transpose(1, 2)  # (M, h, nq, dh)
    d_v = probs.transpose(-1, -2) @ d_o  # (M, h, keys, dh)
    d_p = d_o @ v.transpose(-1, -2)
    d_s = probs * (d_p - (d_p * probs).sum(-1, keepdim=True))  # rowsum(dO * O) == rowsum(dP * P)
    d_q = (d_s @ k).mul_(scale)
    d_k = (d_s.transpose(-1, -2) @ q).mul_(scale)
    merge = lambda t: t.transpose(1, 2).reshape(m, t.shape[2], inner)  # noqa: E731
    d_qkv = qkv.new_zeros(m, s, width, dtype=torch.float32)
    d_qkv[:, s - nq:, :inner] = merge(d_q)
    d_qkv[:, :, inner:2 * inner] = merge(d_k)[:, p:]
    d_qkv[:, :, 2 * inner:] = merge(d_v)[:, p:]
    return d_qkv.to(qkv.dtype)


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads, prefix_qkv, num_queries, forward, backward):
        nq = qkv.shape[1] if num_queries is None else num_queries
        ctx.save_for_backward(qkv, prefix_qkv)
        ctx.heads, ctx.nq, ctx.backward_fn = heads, nq, backward
        return forward(qkv, heads, prefix_qkv, nq)

    @staticmethod
    def backward(ctx, grad_out):
        qkv, prefix_qkv = ctx.saved_tensors
        d_qkv = ctx.backward_fn(grad_out, qkv, ctx.heads, prefix_qkv, ctx.nq)
        return d_qkv, None, None, None, None, None


def window_attention_grad(
    qkv: torch.Tensor,
    heads: int,
    prefix_qkv: Optional[torch.Tensor],
    num_queries: Optional[int],
    forward: AttentionForward,
    backward: AttentionBackward = window_attention_backward,
) -> torch.Tensor:
    """``forward(qkv, heads, prefix_qkv, num_queries)`` (a window attention kernel), differentiable with respect to
    ``qkv`` (not ``prefix_qkv``: a constant of the plan) through ``backward``. qkv's saved for the backward (the
    probabilities are recomputed from it)."""
    return _WindowAttention.apply(qkv, heads, prefix_qkv, num_queries, forward, backward)
