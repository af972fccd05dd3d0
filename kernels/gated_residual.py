"""AdaLN-zero gated residual fused as the epilogue of the projection GEMM (Triton):
``x += gate * (a @ weight^T + bias)`` in place, for the predictor's ``attn.to_out`` and ``mlp.net.4`` Linears; and
without the gate (``project_into``) ``out = a @ weight^T + bias`` written into a strided view in out's dtype, for the
prediction head's last Linear writing each predicted latent straight into the rollout's latent buffer.

a (M, S, K) contiguous, weight (N, K), bias (N,) float32, x (M, S, N) float32 residual stream and gate (M, S, N)
(strided views allowed on M, S: e.g. x[:, -1:] and a slice of the modulation buffer). fp32 inputs use the
``precision`` asked for (``"ieee"``: exact fp32 ``tl.dot``, parity with the reference; ``"tf32"`` / ``"tf32x3"``: tensor
cores); bf16 inputs run on tensor cores with fp32 accumulation. The output tile never leaves registers before it is
gated and added to x, saving the GEMM output's round trip through memory.

Tiles follow the row count: a one-env plan has 300-900 rows and N = 192 columns, so 16 x 32 tiles give 114-342 programs
on 132 SMs (64 x 64 tiles gave 15-45); above ``SMALL_ROWS`` rows 64 x 64 tiles keep the throughput. The grid walks the
columns fastest: the programs that read one A panel run together and share it through L2.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._launch import PlanCache, call_signature, fills_half_the_sms, interpreted, launch, multiprocessor_count
from ._tile_matmul import ACTIVATIONS, SMALL_ROWS, activate, dot_precision, single_pass_tensor_cores, tile_matmul_bias


@triton.jit
def projection_tile(
    a_ptr, w_ptr, bias_ptr, R, N, K, rows_inner, s_am, s_wn,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """This program's (row tile = axis 1, column tile = axis 0) output tile of ``a @ w^T + bias`` in fp32, with its
    rows' (M, S) indices m, s, its rows rm and columns rn, and the tile's mask."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < R
    nmask = rn < N
    acc = tile_matmul_bias(
        a_ptr, w_ptr, bias_ptr, rm, rn, mmask, nmask, K, s_am, s_wn,
        HAS_BIAS, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K,
    )
    m = (rm // rows_inner).to(tl.int64)
    s = (rm % rows_inner).to(tl.int64)
    return acc, m, s, rm, rn, mmask[:, None] & nmask[None, :]


@triton.jit
def _gated_residual_kernel(
    a_ptr, w_ptr, bias_ptr, gate_ptr, x_ptr,
    R, N, K, rows_inner,
    s_am, s_wn, s_gm, s_gs, s_xm, s_xs,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc, m, s, rm, rn, mask = projection_tile(a_ptr, w_ptr, bias_ptr, R, N, K, rows_inner, s_am, s_wn,
                                              HAS_BIAS, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    x_ptrs = x_ptr + (m * s_xm + s * s_xs)[:, None] + rn[None, :]
    if GATED:
        gate = tl.load(gate_ptr + (m * s_gm + s * s_gs)[:, None] + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptrs, mask=mask, other=0.0)
        acc = x.to(tl.float32) + gate * acc
    else:
        acc = activate(acc, ACT)
    tl.store(x_ptrs, acc.to(x_ptr.dtype.element_ty), mask=mask)


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def tiles(rows: int, n: int, k: int, dtype: torch.dtype, tensor_cores: bool = False,
          sm_count: Optional[int] = None) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for a (rows, k) @ (k, n) product (see the module docstring). float32 operands take
    K slices of 32: IEEE dots on the FMA units hold every K slice of a thread's rows / columns in registers, and
    3xTF32 splits each operand in two (64 x 64 x 64 fp32 tiles spill on sm_80 either way).

    ``tensor_cores`` (the forward of a plan with bf16 / fp16 or single-pass TF32 dots; 3xTF32's split operands
    spill in wide tiles): up to ``SMALL_ROWS`` rows, 64 x 32 tiles
    where they still give at least half of the ``sm_count`` SMs (H100's 132 when unknown) a program: at one
    environment's 900-row fc2 (K = 2048) they read the weight from L2 four times less often than 16 x 32 tiles, the
    bound the cost model finds for those (docs/gpu.md "Step 3"); on sm_90 the dot is a ``wgmma``."""
    small = rows <= SMALL_ROWS
    block_m = 16 if small else _block(rows, 64)
    block_n = _block(n, 32 if small else 64)
    block_k = _block(k, 32 if dtype == torch.float32 else 64)
    if small and tensor_cores and fills_half_the_sms(triton.cdiv(rows, 64) * triton.cdiv(n, block_n), sm_count):
        block_m = 64
    return block_m, block_n, block_k


def gated_residual(
    x: torch.Tensor, a: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], gate: torch.Tensor,
    precision: str = "ieee",
) -> torch.Tensor:
    """In place ``x += gate * (a @ weight^T + bias)`` and return x; x, gate (M, S, N), a (M, S, K), weight (N, K).

    ``weight`` None (an Identity projection) gives ``x += gate * a``. precision: of fp32 dots (module docstring).
    Inference only (no autograd). Checks and tiles are derived once per argument signature (``PlanCache``).
    """
    plan = _PLANS.get(call_signature(x, a, weight, bias, gate, precision),
                      lambda: _plan(x, a, weight, bias, gate, precision))
    return plan(x, a, weight, bias, gate)


def project_into(
    out: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], precision: str = "ieee",
    activation: str = "none",
) -> torch.Tensor:
    """``out = act(a @ weight^T + bias)`` (fp32 accumulation and activation, stored in out's dtype) and return out;
    out (M, S, N) strided on M, S and contiguous along N (e.g. one step's slot of a latent buffer), a (M, S, K),
    weight (N, K); activation ``"none"``, ``"gelu"``, ``"gelu_tanh"`` or ``"silu"``. One launch for what a GEMM, the
    bias and output casts, a copy into the slot or an activation take apart. Inference only."""
    if weight is None:
        raise ValueError("project_into needs a weight")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    plan = _PLANS.get(call_signature("project", out, a, weight, bias, precision, activation),
                      lambda: _plan(out, a, weight, bias, None, precision, ACTIVATIONS[activation]))
    return plan(out, a, weight, bias, None)


_PLANS = PlanCache()


def check_projection(x, a, weight, bias, gate) -> None:
    """The argument checks of a gated projection ``x (+)= gate * (a @ weight^T + bias)``, shared with its autograd
    Function (``gated_residual_backward``): x (``project_into``'s out when gate is None), a, gate 3-d, contiguous
    along the last dimension, on x's device, of agreeing shapes; weight (when given) a row-major (N, K) tensor of a's
    dtype, bias (N,)."""
    gated = gate is not None
    for name, t in (("x" if gated else "out", x), ("a", a), ("gate", gate)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-d (M, S, ·) tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension, got strides {t.stride()}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if (gated and gate.shape != x.shape) or a.shape[:2] != x.shape[:2]:
        raise ValueError(f"x, gate (M, S, N) and a (M, S, K) must agree, got {tuple(x.shape)}, "
                         f"{tuple(gate.shape) if gated else None}, {tuple(a.shape)}")
    if weight is None:
        return
    n, k = x.shape[2], a.shape[2]
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a row-major ({n}, {k}) tensor, got {type(weight).__name__}")
    if weight.shape != (n, k) or weight.stride(-1) != 1:
        raise ValueError(f"weight must be a row-major ({n}, {k}) tensor, got {tuple(weight.shape)} strides {weight.stride()}")
    if weight.dtype != a.dtype:
        raise ValueError(f"a and weight must share a dtype, got {a.dtype} and {weight.dtype}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def _plan(x, a, weight, bias, gate, precision: str, act: int = 0) -> Callable[..., torch.Tensor]:
    """Validate a ``gated_residual`` call (``project_into``'s when gate is None: x is its out); -> ``run(x, a,
    weight, bias, gate)`` for every call of its signature."""
    check_projection(x, a, weight, bias, gate)
    gated = gate is not None
    if weight is None:
        if a.shape != x.shape:
            raise ValueError(f"without weight, a must have x's shape {tuple(x.shape)}, got {tuple(a.shape)}")
        return lambda x, a, weight, bias, gate: x.addcmul_(gate, a.to(x.dtype))
    m, s, n = x.shape
    k = a.shape[2]
    r = m * s
    if r == 0:
        return lambda x, a, weight, bias, gate: x
    a2 = a.reshape(r, k)
    copy = a2.stride(-1) != 1
    a_stride = k if copy else a2.stride(0)
    upcast = interpreted(a.device)  # CPU tensors: the Triton interpreter (exact fp32 dots only)
    dot = dot_precision(a.dtype, precision)
    block_m, block_n, block_k = tiles(r, n, k, torch.float32 if upcast else a.dtype,
                                      single_pass_tensor_cores(a.dtype, dot), multiprocessor_count(a.device))
    grid = (triton.cdiv(n, block_n), triton.cdiv(r, block_m))
    g = gate if gated else x  # x stands in for the unread gate
    ints = (r, n, k, s, a_stride, weight.stride(0), g.stride(0), g.stride(1), x.stride(0), x.stride(1))
    # 3xTF32 splits each float32 operand in two: its 64 x 64 tiles (above SMALL_ROWS) spill on sm_80 with 4 warps
    # once an activation epilogue is added (the action conditioning's SiLU)
    warps = 8 if block_m == 64 and block_n == 64 and dot == "tf32x3" and a.dtype == torch.float32 else 4
    consts = dict(HAS_BIAS=bias is not None, PRECISION=dot, UPCAST=upcast, GATED=gated, ACT=act,
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3)

    def run(x, a, weight, bias, gate):
        a2 = a.reshape(r, k)
        launch(_gated_residual_kernel, grid, a2.contiguous() if copy else a2, weight,
               bias if bias is not None else weight, x if gate is None else gate, x, *ints, **consts)
        return x

    return run
