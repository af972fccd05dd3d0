"""The AdaLN-zero gated residual ``out = x + gate * (a @ weight^T + bias)`` differentiable (Triton): the forward and
backward of the gated GEMM under autograd (the differentiable rollout of the gradient planners).

Forward: ``kernels.gated_residual``'s fused GEMM, out of place (a new contiguous ``out``; x is only read), which also
writes the GEMM output ``y = a @ weight^T + bias`` (float32, (M*S, N)) when the gate needs a gradient. Backward, one
launch: ``grad_a = (grad_out * gate) @ weight`` with the gate multiply fused as the GEMM's prologue (the product never
leaves registers), and ``grad_gate = grad_out * y`` written by the programs of the first column tile as they stream
``grad_out`` and gate; ``grad_x = grad_out`` (no kernel).

Saved for the backward: y (when the gate needs a gradient), the gate and the weight (views of tensors that live
anyway). Saving y rather than recomputing it from ``a`` keeps N = 192 columns instead of K (the attention output's
1024, the MLP's 2048 on the paper model), so autograd can free ``a``: 300 samples x 3 window tokens x 192 x 4 bytes =
675 KiB per gated residual, 1.32 MiB per predictor block (two of them), 7.9 MiB per rollout step of the 6-block paper
predictor.

Weights are frozen: no gradient reaches ``weight`` or ``bias`` (the planners differentiate with respect to actions
only). Tiles and precisions as in ``kernels.gated_residual`` (fp32 ``"ieee"`` / ``"tf32"`` / ``"tf32x3"`` dots, bf16
on tensor cores with float32 accumulation, 16-row tiles up to ``SMALL_ROWS`` rows).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._launch import PlanCache, call_signature, interpreted, launch
from ._tile_matmul import SMALL_ROWS, dot_precision
from .gated_residual import check_projection, projection_tile, tiles


@triton.jit
def _gated_residual_save_kernel(
    a_ptr, w_ptr, bias_ptr, gate_ptr, x_ptr, out_ptr, y_ptr,
    R, N, K, rows_inner,
    s_am, s_wn, s_gm, s_gs, s_xm, s_xs,
    HAS_BIAS: tl.constexpr, SAVE_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc, m, s, rm, rn, mask = projection_tile(a_ptr, w_ptr, bias_ptr, R, N, K, rows_inner, s_am, s_wn,
                                              HAS_BIAS, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    gate = tl.load(gate_ptr + (m * s_gm + s * s_gs)[:, None] + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + (m * s_xm + s * s_xs)[:, None] + rn[None, :], mask=mask, other=0.0)
    dense = rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out_ptr + dense, (x.to(tl.float32) + gate * acc).to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE_Y:
        tl.store(y_ptr + dense, acc, mask=mask)


@triton.jit
def _gated_residual_backward_kernel(
    grad_ptr, gate_ptr, y_ptr, w_ptr, da_ptr, dgate_ptr,
    R, N, K, rows_inner,
    s_om, s_os, s_gm, s_gs, s_wn,
    GRAD_A: tl.constexpr, GRAD_GATE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program (k tile, row tile): grad_a[rows, k tile] = sum over N slices of (grad_out * gate)[rows, n] @ w[n, k];
    the programs of k tile 0 also write grad_gate[rows, :] = grad_out * y."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    mmask = rm < R
    kmask = rk < K
    m = (rm // rows_inner).to(tl.int64)
    s = (rm % rows_inner).to(tl.int64)
    grad_rows = grad_ptr + (m * s_om + s * s_os)
    gate_rows = gate_ptr + (m * s_gm + s * s_gs)
    dense_rows = rm.to(tl.int64) * N
    first = tl.program_id(0) == 0
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + rn
        nmask = nn < N
        mask = mmask[:, None] & nmask[None, :]
        g = tl.load(grad_rows[:, None] + nn[None, :], mask=mask, other=0.0).to(tl.float32)
        if GRAD_A:
            gate = tl.load(gate_rows[:, None] + nn[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + nn.to(tl.int64)[:, None] * s_wn + rk[None, :], mask=nmask[:, None] & kmask[None, :],
                        other=0.0)
            if UPCAST:
                acc = tl.dot(g * gate, w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot((g * gate).to(w.dtype), w, acc, input_precision=PRECISION)
        if GRAD_GATE:
            if first:
                y = tl.load(y_ptr + dense_rows[:, None] + nn[None, :], mask=mask, other=0.0)
                tl.store(dgate_ptr + dense_rows[:, None] + nn[None, :], (g * y).to(dgate_ptr.dtype.element_ty),
                         mask=mask)
    if GRAD_A:
        tl.store(da_ptr + rm.to(tl.int64)[:, None] * K + rk[None, :], acc.to(da_ptr.dtype.element_ty),
                 mask=mmask[:, None] & kmask[None, :])


def _check(x, a, weight, bias, gate) -> None:
    """``check_projection``, with the gate and weight this Function always has (an Identity projection takes the
    torch ops)."""
    if gate is None:
        raise ValueError("gate must be a 3-d (M, S, ·) tensor, got NoneType")
    check_projection(x, a, weight, bias, gate)
    if weight is None:
        raise ValueError(f"weight must be a row-major ({x.shape[2]}, {a.shape[2]}) tensor, got None")


def gated_residual_forward(
    x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gate: torch.Tensor,
    precision: str = "ieee", save_y: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``out = x + gate * y`` with ``y = a @ weight^T + bias``, out of place: x, gate (M, S, N) (strided on M, S),
    a (M, S, K), weight (N, K) -> (out (M, S, N) contiguous in x's dtype, y (M, S, N) float32 or None when not
    ``save_y``)."""
    plan = _FORWARD_PLANS.get(call_signature(x, a, weight, bias, gate, precision, save_y),
                              lambda: _forward_plan(x, a, weight, bias, gate, precision, save_y))
    return plan(x, a, weight, bias, gate)


def gated_residual_backward(
    grad_out: torch.Tensor, gate: Optional[torch.Tensor], y: Optional[torch.Tensor], weight: torch.Tensor,
    precision: str = "ieee",
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """grad_out (M, S, N) of ``gated_residual_forward`` -> (grad_a (M, S, K) in weight's dtype, grad_gate (M, S, N)
    float32): grad_a when ``gate`` is given, grad_gate when ``y`` is given (None otherwise)."""
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    plan = _BACKWARD_PLANS.get(call_signature(grad_out, gate, y, weight, precision),
                               lambda: _backward_plan(grad_out, gate, y, weight, precision))
    return plan(grad_out, gate, y, weight)


_FORWARD_PLANS = PlanCache()
_BACKWARD_PLANS = PlanCache()


def _forward_plan(x, a, weight, bias, gate, precision: str, save_y: bool) -> Callable:
    _check(x, a, weight, bias, gate)
    m, s, n = x.shape
    k = a.shape[2]
    r = m * s
    upcast = interpreted(a.device)  # CPU tensors: the Triton interpreter (exact fp32 dots only)
    dot = dot_precision(a.dtype, precision)
    block_m, block_n, block_k = tiles(r, n, k, torch.float32 if upcast else a.dtype)
    grid = (triton.cdiv(n, block_n), triton.cdiv(r, block_m))
    consts = dict(HAS_BIAS=bias is not None, SAVE_Y=save_y, PRECISION=dot, UPCAST=upcast,
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3)

    def run(x, a, weight, bias, gate):
        out = torch.empty(m, s, n, device=x.device, dtype=x.dtype)
        y = torch.empty(m, s, n, device=x.device, dtype=torch.float32) if save_y else None
        if r:
            a2 = a.reshape(r, k)  # a view, or a copy when the row axes do not merge
            launch(_gated_residual_save_kernel, grid, a2, weight, bias if bias is not None else weight, gate, x,
                   out, y if save_y else out, r, n, k, s, a2.stride(0), weight.stride(0), gate.stride(0),
                   gate.stride(1), x.stride(0), x.stride(1), **consts)
        return out, y

    return run


def _backward_plan(grad_out, gate, y, weight, precision: str) -> Callable:
    m, s, n = grad_out.shape
    k = weight.shape[1]
    r = m * s
    grad_a, grad_gate = gate is not None, y is not None
    upcast = interpreted(grad_out.device)
    dot = dot_precision(weight.dtype, precision)
    block_m, block_k, block_n = tiles(r, k, n, torch.float32 if upcast else weight.dtype)
    # 64 x 64 tiles (above SMALL_ROWS rows) take 8 warps: with the gate prologue and the grad_gate stores, 4 warps
    # spill fp32 tiles on sm_80 (255 registers)
    warps = 4 if r <= SMALL_ROWS else 8
    grid = (triton.cdiv(k, block_k) if grad_a else 1, triton.cdiv(r, block_m))
    gate_strides = (gate.stride(0), gate.stride(1)) if grad_a else (0, 0)
    consts = dict(GRAD_A=grad_a, GRAD_GATE=grad_gate, PRECISION=dot, UPCAST=upcast,
                  BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, num_warps=warps, num_stages=3)

    def run(grad_out, gate, y, weight):
        da = torch.empty(m, s, k, device=grad_out.device, dtype=weight.dtype) if grad_a else None
        dgate = torch.empty(m, s, n, device=grad_out.device, dtype=torch.float32) if grad_gate else None
        if r and (grad_a or grad_gate):
            launch(_gated_residual_backward_kernel, grid, grad_out, gate if grad_a else grad_out,
                   y if grad_gate else grad_out, weight, da if grad_a else grad_out, dgate if grad_gate else grad_out,
                   r, n, k, s, grad_out.stride(0), grad_out.stride(1), *gate_strides, weight.stride(0), **consts)
        return da, dgate

    return run


class _GatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, weight, bias, gate, precision):
        need_a, need_gate = ctx.needs_input_grad[1], ctx.needs_input_grad[4]
        out, y = gated_residual_forward(x, a, weight, bias, gate, precision, save_y=need_gate)
        ctx.save_for_backward(gate if need_a else None, y, weight)
        ctx.precision, ctx.gate_dtype = precision, gate.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        gate, y, weight = ctx.saved_tensors
        grad_a, grad_gate = gated_residual_backward(grad_out, gate, y, weight, ctx.precision)
        if grad_gate is not None and grad_gate.dtype != ctx.gate_dtype:
            grad_gate = grad_gate.to(ctx.gate_dtype)
        grad_x = grad_out if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, None, None, grad_gate, None


def gated_residual_grad(
    x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gate: torch.Tensor,
    precision: str = "ieee",
) -> torch.Tensor:
    """``x + gate * (a @ weight^T + bias)`` as a new (M, S, N) tensor, differentiable with respect to x, a and gate
    by the Triton backward above; x, gate (M, S, N), a (M, S, K), weight (N, K). ``weight`` and ``bias`` get no
    gradient (frozen weights: pass tensors that do not require grad)."""
    return _GatedResidual.apply(x, a, weight, bias, gate, precision)
