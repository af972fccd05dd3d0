"""AdaLN pre-norm of the LeWM predictor in one pass (Triton): ``LN2(LN1(x) * mul + shift)``.

LN1 is the block's ``norm1``/``norm2`` (no affine, eps 1e-6), ``mul``/``shift`` the AdaLN modulation (``mul`` = 1 +
scale), LN2 the attention's ``attn.norm`` / the MLP's ``mlp.net.0`` (optional affine; the rollout engine folds that
affine into the following Linear and passes none). Statistics in float32, output in the GEMM input dtype.

Rows are (M, S) pairs read through strides, so the modulations can be strided views of the per-call modulation
buffer (M, T, depth, 6, D) and the residual stream a slice such as x[:, -1:]. Several rows per program.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launch


@triton.jit
def _adaln_layernorm_kernel(
    x_ptr, shift_ptr, mul_ptr, w_ptr, b_ptr, out_ptr,
    n_rows, rows_inner, D, eps1, eps2,
    sx_m, sx_s, sh_m, sh_s, sm_m, sm_s,
    HAS_AFFINE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    m = (rows // rows_inner).to(tl.int64)
    s = (rows % rows_inner).to(tl.int64)
    x = tl.load(x_ptr + (m * sx_m + s * sx_s)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    h = xc * tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps1)[:, None]
    shift = tl.load(shift_ptr + (m * sh_m + s * sh_s)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mul = tl.load(mul_ptr + (m * sm_m + s * sm_s)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    h = h * mul + shift
    mean2 = tl.sum(h, axis=1) / D
    hc = tl.where(mask, h - mean2[:, None], 0.0)
    y = hc * tl.rsqrt(tl.sum(hc * hc, axis=1) / D + eps2)[:, None]
    if HAS_AFFINE:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = y * w[None, :] + b[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows_view(t: torch.Tensor, name: str, shape) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (M, S, D), got {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along its last (feature) dimension, got strides {t.stride()}")
    return t


def adaln_layernorm(
    x: torch.Tensor,
    shift: torch.Tensor,
    mul: torch.Tensor,
    eps1: float,
    eps2: float,
    out_dtype: Optional[torch.dtype] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``LN2(LN1(x) * mul + shift)`` for x, shift, mul of shape (M, S, D) or (M, D) (strided on the leading axes).

    LN1: no affine, eps1; LN2: eps2 and the optional affine ``weight``/``bias`` (D,). Returns a contiguous tensor of
    x's shape in ``out_dtype`` (default x.dtype). Inference only (no autograd).
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"x must be a (M, S, D) or (M, D) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    out_shape = x.shape
    x3 = _rows_view(x, "x", (x.shape[0], 1 if x.dim() == 2 else x.shape[1], x.shape[-1]))
    shift3 = _rows_view(shift, "shift", x3.shape)
    mul3 = _rows_view(mul, "mul", x3.shape)
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must be given together (or neither)")
    d = x3.shape[-1]
    if weight is not None and (weight.shape != (d,) or bias.shape != (d,)):
        raise ValueError(f"weight and bias must have shape ({d},), got {tuple(weight.shape)} and {tuple(bias.shape)}")
    for name, t in (("shift", shift3), ("mul", mul3), ("weight", weight)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    m, s = x3.shape[:2]
    out = torch.empty(m, s, d, device=x.device, dtype=out_dtype or x.dtype)
    n_rows = m * s
    if n_rows == 0:
        return out.view(out_shape)
    block_d = triton.next_power_of_2(d)
    rows = max(1, min(16, 2048 // block_d))
    grid = (triton.cdiv(n_rows, rows),)
    launch(
        _adaln_layernorm_kernel, grid,
        x3, shift3, mul3, weight if weight is not None else x3, bias if bias is not None else x3, out,
        n_rows, s, d, float(eps1), float(eps2),
        x3.stride(0), x3.stride(1), shift3.stride(0), shift3.stride(1), mul3.stride(0), mul3.stride(1),
        HAS_AFFINE=weight is not None, ROWS=rows, BLOCK_D=block_d, num_warps=4,
    )
    return out.view(out_shape)
