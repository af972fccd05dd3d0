"""Shared Triton building blocks (not ops of their own): one output tile of ``a @ w^T + bias`` accumulated in fp32,
for the kernels that fuse an epilogue into a projection GEMM (``gated_residual``, ``goal_cost``), and the GELU
epilogue of ``adaln_linear`` and ``project_into``."""

import torch
import triton
import triton.language as tl

PRECISIONS = ("ieee", "tf32", "tf32x3")
SMALL_ROWS = 4096
"""Up to this many output rows (a one-environment plan: 300-900) the GEMM kernels take 16-row tiles, so that their
grids fill the GPU; above it, larger tiles for throughput."""


def dot_precision(dtype: torch.dtype, precision: str) -> str:
    """The ``PRECISION`` constexpr for operands of ``dtype``: the requested one for float32, Triton's default for
    bf16/fp16 (tensor cores either way). Raises on an unknown precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision if dtype == torch.float32 else "tf32"


def single_pass_tensor_cores(dtype: torch.dtype, dot: str) -> bool:
    """Whether operands of ``dtype`` multiplied at ``dot`` (``dot_precision``) take one tensor-core pass: 16-bit
    operands, or float32 with TF32. Only such dots get the wide latency tiles: exact float32 runs on the FMA units,
    and 3xTF32 splits each operand in two, whose wide tiles spill (and overflow sm_80's shared memory)."""
    return dtype != torch.float32 or dot == "tf32"


@triton.jit
def tile_matmul_bias(
    a_ptr, w_ptr, bias_ptr, rm, rn, mmask, nmask, K, s_am, s_wn,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Rows ``rm`` of a (row stride s_am) times rows ``rn`` of w (row stride s_wn), both contiguous along K, plus
    bias[rn] -> fp32 (BLOCK_M, BLOCK_N). PRECISION: ``tl.dot``'s input precision for fp32 operands ("ieee" exact on
    the FMA units, "tf32" / "tf32x3" on tensor cores); UPCAST: multiply in exact fp32 (the Triton 3.x interpreter
    mis-handles bf16 ``tl.dot`` operands)."""
    rk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * s_am
    w_cols = w_ptr + rn.to(tl.int64)[None, :] * s_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        kmask = kk < K
        a = tl.load(a_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_cols + kk[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    return acc


ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
"""The GEMM epilogues ``activate`` computes (the ``ACT`` constexpr): none, GELU (erf), GELU's tanh approximation, SiLU
(the action encoder's)."""


@triton.jit
def activate(acc, ACT: tl.constexpr):
    """``acc`` (fp32) through activation ``ACT`` (``ACTIVATIONS``), as ``F.gelu`` / ``F.silu`` compute it."""
    if ACT == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 2:
        inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * inner)  # 0.5 * (1 + tanh(u)) == sigmoid(2u)
    elif ACT == 3:
        acc = acc * tl.sigmoid(acc)
    return acc
