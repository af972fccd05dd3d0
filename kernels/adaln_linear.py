"""AdaLN pre-norm fused as the prologue of the following projection GEMM (Triton), with an optional GELU epilogue:
``act(LN2(LN1(x) * mul + shift) @ weight^T + bias)``, or without modulation ``act(LN1(x) @ weight^T + bias)`` (the
prediction head's final norm).

One launch replaces three of the predictor's (the AdaLN pre-norm, the ``to_qkv`` / ``mlp.net.1`` GEMM and, for the
MLP, the GELU): each program normalises a panel of 64 rows (tensor-core dots) or 16 rows (exact float32 on the FMA
units, 3xTF32, GPUs with less shared memory) of the whole width (D = 192, padded to 256) once, in registers, and
multiplies it with a group of column tiles of the weight; the normalised rows are never written (``tiles``). LN1 has
no affine (eps1); LN2's affine is folded into ``weight``/``bias`` by the rollout engine (eps2). Statistics in
float32, the GEMM in the weight's dtype with float32 accumulation. The rollout uses it for a one-environment plan (at
most ``MAX_ROWS`` rows) and, with 16-bit weights and 64-row panels, for many environments too; otherwise it keeps the
three steps apart there, where cuBLAS' large tiles read the weight far fewer times than 16-row panels (``fused_fits``,
``ops.predictor.TritonOps``).

Rows are (M, S) pairs read through strides (x a slice such as x[:, -1:], mul/shift views of the modulation buffer).
The grid walks the column groups fastest, so the programs that share a row panel run together.

Precision of float32 inputs (``precision``): ``"ieee"`` (exact fp32 on the FMA units, the parity mode), ``"tf32"``
(tensor cores, 10-bit mantissa products), ``"tf32x3"`` (tensor cores, error-compensated: about fp32 accuracy).
bfloat16 / float16 weights always use tensor cores.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._launch import (PlanCache, call_signature, fills_half_the_sms, interpreted, launch, multiprocessor_count,
                      shared_memory_per_block)
from ._tile_matmul import ACTIVATIONS, SMALL_ROWS, activate, dot_precision, single_pass_tensor_cores


@triton.jit
def _adaln_linear_kernel(
    x_ptr, shift_ptr, mul_ptr, w_ptr, bias_ptr, out_ptr, pos_ptr, x_out_ptr,
    R, N, D, rows_inner, eps1, eps2,
    s_xm, s_xs, s_hm, s_hs, s_mm, s_ms, s_wn, s_om, s_os, s_ps,
    MODULATE: tl.constexpr, ADD_POS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    N_TILES: tl.constexpr,
):
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    mmask = rm < R
    dmask = rd < D
    mask = mmask[:, None] & dmask[None, :]
    m = (rm // rows_inner).to(tl.int64)
    s = (rm % rows_inner).to(tl.int64)

    x = tl.load(x_ptr + (m * s_xm + s * s_xs)[:, None] + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    if ADD_POS:  # the window position's embedding: x + pos is the residual stream
        x += tl.load(pos_ptr + (s * s_ps)[:, None] + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        # one extra column group only writes it out (a store beside the GEMM spilled in the AOT check on sm_90)
        if tl.program_id(0) == tl.num_programs(0) - 1:
            tl.store(x_out_ptr + rm[:, None] * D + rd[None, :], x.to(x_out_ptr.dtype.element_ty), mask=mask)
        else:
            _normalise_and_project(x, rm, rd, mmask, dmask, mask, m, s, shift_ptr, mul_ptr, w_ptr, bias_ptr, out_ptr,
                                   N, D, eps1, eps2, s_hm, s_hs, s_mm, s_ms, s_wn, s_om, s_os, MODULATE, HAS_BIAS,
                                   ACT, PRECISION, UPCAST, BLOCK_N, N_TILES)
    else:
        _normalise_and_project(x, rm, rd, mmask, dmask, mask, m, s, shift_ptr, mul_ptr, w_ptr, bias_ptr, out_ptr,
                               N, D, eps1, eps2, s_hm, s_hs, s_mm, s_ms, s_wn, s_om, s_os, MODULATE, HAS_BIAS, ACT,
                               PRECISION, UPCAST, BLOCK_N, N_TILES)


@triton.jit
def _normalise_and_project(
    x, rm, rd, mmask, dmask, mask, m, s, shift_ptr, mul_ptr, w_ptr, bias_ptr, out_ptr,
    N, D, eps1, eps2, s_hm, s_hs, s_mm, s_ms, s_wn, s_om, s_os,
    MODULATE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, N_TILES: tl.constexpr,
):
    """The row panel x (BLOCK_M, BLOCK_D) normalised once in registers (centred two-pass statistics, as
    F.layer_norm), then N_TILES column tiles of this program's column group, each a full-K GEMM against it."""
    mean1 = tl.sum(x, axis=1) / D
    h = tl.where(mask, x - mean1[:, None], 0.0)
    h = h * tl.rsqrt(tl.sum(h * h, axis=1) / D + eps1)[:, None]
    if MODULATE:
        mul = tl.load(mul_ptr + (m * s_mm + s * s_ms)[:, None] + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + (m * s_hm + s * s_hs)[:, None] + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        h = h * mul + shift
        mean2 = tl.sum(tl.where(mask, h, 0.0), axis=1) / D
        h = tl.where(mask, h - mean2[:, None], 0.0)
        h = h * tl.rsqrt(tl.sum(h * h, axis=1) / D + eps2)[:, None]
    if UPCAST:
        a = h
    else:
        a = h.to(w_ptr.dtype.element_ty)
    for t in range(N_TILES):
        rn = (tl.program_id(0) * N_TILES + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        w = tl.load(w_ptr + rn.to(tl.int64)[None, :] * s_wn + rd[:, None], mask=dmask[:, None] & nmask[None, :],
                    other=0.0)
        if UPCAST:
            acc = tl.dot(a, w.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(a, w, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        acc = activate(acc, ACT)
        out_ptrs = out_ptr + (m * s_om + s * s_os)[:, None] + rn[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


PANEL_ROWS = 16
"""Rows of a program's panel for exact float32 dots on the FMA units (the grid fills the GPU at one environment's
300-900 rows)."""
WIDE_PANEL_ROWS = 64
"""Rows of a program's panel for tensor-core dots (bf16 / fp16 weights, float32 with ``"tf32"`` / ``"tf32x3"``): four
times fewer weight reads from L2 than 16-row panels, and on sm_90 the ``wgmma`` instruction (64-row operands)."""
MAX_ROWS = SMALL_ROWS
"""Above this many rows the rollout runs the pre-norm, the GEMM and the activation apart (``TritonOps``) unless the
64-row panels apply (``fused_fits``): 16-row panels would re-read the whole weight from L2 once per 16 rows."""
MAX_WIDTH = 256
"""Widest model dimension D the panel holds in registers (next power of two)."""


WIDE_PANEL_SHARED_MEMORY = 160 * 1024
"""Shared memory a GPU must offer a program for the wide panels (they take up to 104 KiB on sm_80 and 136 KiB on
sm_90; the 99-101 KiB of sm_86 / sm_89 / sm_120 GPUs keep the 16-row panels, which take at most 66 KiB)."""


def fused_fits(rows: int, n: int, d: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether one ``adaln_linear`` launch is the rollout's choice for ``rows`` rows of width ``d`` times an (n, d)
    weight of ``dtype`` on ``device`` (else ``TritonOps`` runs the pre-norm apart from the GEMM): up to ``MAX_ROWS``
    rows; above (many environments), for 16-bit weights where ``tiles`` gives 64-row panels, which read the weight
    once per 64 rows and never write the normalised rows (cost model, 50-env bf16 plan: 312 -> 293 ms; docs/gpu.md
    "Step 3"). float32 weights keep the pre-norm apart there (TF32 64-row panels: 659 -> 708 ms by the same model)."""
    if d > MAX_WIDTH:
        return False
    if rows <= MAX_ROWS:
        return True
    if dtype == torch.float32:
        return False
    block_m = tiles(rows, n, d, dtype, "tf32", multiprocessor_count(device), shared_memory_per_block(device))[0]
    return block_m == WIDE_PANEL_ROWS


def tiles(rows: int, n: int, d: int, dtype: torch.dtype, dot: str, sm_count: Optional[int] = None,
          shared_memory: Optional[int] = None) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_D, N_TILES, num_warps): panels of BLOCK_M rows and the whole width D (padded to a power
    of two), BLOCK_N-wide column tiles (64; 32 for float32 operands, whose weight tiles take twice the registers; 16
    for exact float32 dots on the FMA units (``dot`` ``"ieee"``), which hold the whole K in registers), N_TILES of
    them per program, the panel's normalisation paid once per N_TILES tiles.

    Single-pass tensor-core dots (``single_pass_tensor_cores``) take ``WIDE_PANEL_ROWS``-row panels (8 warps, so that
    the float32 panel stays in registers) with 4 column tiles per program, or 2 where 4 would leave fewer programs
    than half of the ``sm_count`` SMs (``fills_half_the_sms``); if even 2 would, or the GPU offers less than
    ``WIDE_PANEL_SHARED_MEMORY`` per program (``shared_memory``; None: an A100 / H100 class GPU), 16-row panels as
    for the FMA units. The choice is the cost model's (``bench/gpu_model.py``, docs/gpu.md "Step 3"): at one
    environment's 300-900 rows 64-row panels read the weights from L2 four times less often than 16-row panels, which
    the model finds the bound of the 16-row kernels. FMA dots and 3xTF32 keep 16-row panels and N_TILES (>= 2) chosen
    so that about 2-3 programs per SM of an H100 remain."""
    block_d = max(16, triton.next_power_of_2(d))
    fma = dtype == torch.float32 and dot == "ieee"
    block_n = 16 if fma else 32 if dtype == torch.float32 else 64
    col_tiles = triton.cdiv(n, block_n)
    roomy = shared_memory is None or shared_memory >= WIDE_PANEL_SHARED_MEMORY
    if single_pass_tensor_cores(dtype, dot) and roomy:
        for n_tiles in (4, 2):
            n_tiles *= 64 // block_n  # the same 256 / 128 columns per program for 32-wide float32 tiles
            if fills_half_the_sms(triton.cdiv(rows, WIDE_PANEL_ROWS) * triton.cdiv(col_tiles, n_tiles), sm_count):
                return WIDE_PANEL_ROWS, block_n, block_d, n_tiles, 8
    row_tiles = triton.cdiv(rows, PANEL_ROWS)
    n_tiles = 2  # a loop of one tile is not software-pipelined: the FMA (IEEE float32) dot then spills
    while n_tiles < col_tiles and row_tiles * triton.cdiv(col_tiles, n_tiles * 2) >= 264:  # 2 programs per SM
        n_tiles *= 2
    return PANEL_ROWS, block_n, block_d, n_tiles, 4


def adaln_linear(
    x: torch.Tensor,
    shift: Optional[torch.Tensor],
    mul: Optional[torch.Tensor],
    eps1: float,
    eps2: float,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str = "none",
    precision: str = "ieee",
    out: Optional[torch.Tensor] = None,
    pos: Optional[torch.Tensor] = None,
    x_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``act(LN2(LN1(x) * mul + shift) @ weight^T + bias)``: x, shift, mul (M, S, D) (strided on M, S, contiguous
    along D), weight (N, D) row-major, bias (N,) -> (M, S, N) contiguous in weight's dtype, or written into ``out``
    ((M, S, N) in weight's dtype, strided on M, S, contiguous along N) and returned. shift and mul None:
    ``act(LN1(x) @ weight^T + bias)`` (eps2 unused). Inference only.

    pos (S, D) contiguous along D, with x_out (M, S, D) contiguous: ``x + pos`` (a row per window position, the
    predictor's positional embedding) stands for x and is written into x_out, the residual stream of the blocks (the
    rollout's first block: no separate add launch).

    activation: ``"none"``, ``"gelu"`` (erf) or ``"gelu_tanh"``; precision: see the module docstring. Checks and tiles
    are derived once per argument signature (``PlanCache``).
    """
    plan = _PLANS.get(call_signature(x, shift, mul, eps1, eps2, weight, bias, activation, precision, out, pos, x_out),
                      lambda: _plan(x, shift, mul, eps1, eps2, weight, bias, activation, precision, out, pos, x_out))
    return plan(x, shift, mul, weight, bias, out, pos, x_out)


_PLANS = PlanCache()


def _plan(x, shift, mul, eps1, eps2, weight, bias, activation: str, precision: str, out: Optional[torch.Tensor],
          pos: Optional[torch.Tensor], x_out: Optional[torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Validate an ``adaln_linear`` call; -> ``run(x, shift, mul, weight, bias, out, pos, x_out)`` for every call of
    its signature."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (M, S, D) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    modulate = shift is not None
    if modulate != (mul is not None):
        raise ValueError("shift and mul must be given together (or neither)")
    for name, t in (("x", x), ("shift", shift), ("mul", mul), ("weight", weight)):
        if t is None:
            continue
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension, got strides {t.stride()}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if modulate and (shift.shape != x.shape or mul.shape != x.shape):
        raise ValueError(f"x, shift and mul must share a (M, S, D) shape, got {tuple(x.shape)}, "
                         f"{tuple(shift.shape)}, {tuple(mul.shape)}")
    m, s, d = x.shape
    n = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(f"weight must be (N, {d}), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    dot = dot_precision(weight.dtype, precision)
    if d > MAX_WIDTH:
        raise ValueError(f"adaln_linear holds rows of width <= {MAX_WIDTH} in registers, got D={d}")
    if out is not None:
        if out.shape != (m, s, n) or out.dtype != weight.dtype or out.device != x.device or out.stride(-1) != 1:
            raise ValueError(f"out must be a ({m}, {s}, {n}) {weight.dtype} tensor on {x.device}, contiguous along its "
                             f"last dimension, got {tuple(out.shape)} {out.dtype} on {out.device} strides {out.stride()}")
    if (pos is None) != (x_out is None):
        raise ValueError("pos and x_out must be given together (or neither)")
    if pos is not None:
        if pos.shape != (s, d) or pos.stride(-1) != 1 or pos.device != x.device or not pos.is_floating_point():
            raise ValueError(f"pos must be a floating ({s}, {d}) tensor on {x.device}, contiguous along its last "
                             f"dimension, got {tuple(pos.shape)} {pos.dtype} on {pos.device} strides {pos.stride()}")
        if (x_out.shape != x.shape or not x_out.is_contiguous() or x_out.device != x.device
                or not x_out.is_floating_point() or x_out.numel() >= 2 ** 31):
            raise ValueError(f"x_out must be a contiguous floating ({m}, {s}, {d}) tensor on {x.device} (fewer than "
                             f"2**31 elements), got {tuple(x_out.shape)} {x_out.dtype} on {x_out.device} strides "
                             f"{x_out.stride()}")
    rows = m * s
    if rows == 0:
        return lambda x, shift, mul, weight, bias, out, pos, x_out: (
            torch.empty(m, s, n, device=x.device, dtype=weight.dtype) if out is None else out)
    # CPU tensors run in the Triton interpreter, whose dots take fp32 operands only (and ignore TF32): it runs the
    # tiles the GPU would, in exact fp32
    upcast = interpreted(x.device)
    block_m, block_n, block_d, n_tiles, warps = tiles(rows, n, d, weight.dtype, dot, multiprocessor_count(x.device),
                                                      shared_memory_per_block(x.device))
    # with pos: one more column group, whose programs write x + pos into x_out (and compute nothing else)
    grid = (triton.cdiv(triton.cdiv(n, block_n), n_tiles) + (pos is not None), triton.cdiv(rows, block_m))
    sh, mu = (shift, mul) if modulate else (x, x)  # x stands in for the unread shift / mul
    ints = (rows, n, d, s, float(eps1), float(eps2), x.stride(0), x.stride(1), sh.stride(0), sh.stride(1),
            mu.stride(0), mu.stride(1), weight.stride(0), s * n if out is None else out.stride(0),
            n if out is None else out.stride(1), 0 if pos is None else pos.stride(0))
    consts = dict(MODULATE=modulate, ADD_POS=pos is not None, HAS_BIAS=bias is not None, ACT=ACTIVATIONS[activation],
                  PRECISION=dot, UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, N_TILES=n_tiles, num_warps=warps,
                  num_stages=2)

    def run(x, shift, mul, weight, bias, out, pos, x_out):
        if out is None:
            out = torch.empty(m, s, n, device=x.device, dtype=weight.dtype)
        launch(_adaln_linear_kernel, grid, x, x if shift is None else shift, x if mul is None else mul, weight,
               bias if bias is not None else weight, out, x if pos is None else pos, x if x_out is None else x_out,
               *ints, **consts)
        return out

    return run
