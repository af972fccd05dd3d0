"""Fused SIGReg kernels (Triton): the projection x = z @ A, cos/sin at the K knots and the reduction over the batch in
one pass, and the matching vector-Jacobian product; neither pass stores the (T, B, M, K) tensor, nor even (T, B, M).

``sigreg_sums(z (T,B,D), A (D,M), t (K)) -> (2, T, M, K)`` float32: ``[sum_b cos(t_k x_tbm), sum_b sin(t_k x_tbm)]``.
``sigreg_sums_backward(grad (2,T,M,K), z, A, t) -> dz (T,B,D)`` in z's dtype:
``dz[t,b] = sum_m G[t,b,m] A[:,m]`` with ``G = sum_k t_k (grad_S cos(t_k x) - grad_C sin(t_k x))``; x and G live only in
registers, tile by tile.

One knot-evaluation path for any knots: from angle 0, knot to knot by angle addition with the step (t_k - t_{k-1}) x
(t_{-1} = 0), whose cos/sin are computed only when the step changes: once per tile for the default knots
(``sigreg_knots``: t_0 = 0, then equispaced), at every knot for arbitrary ones (rotating (1, 0) by an angle gives
its cos/sin exactly). The knot loop is
a device loop, not unrolled, so the compiled kernels stay small and spill-free. Inputs may be
float32/bfloat16/float16 and non-contiguous; all arithmetic is float32 (the projection uses IEEE float32 dot products,
not TF32). Partial results of the batch / projection splits are summed in a fixed order, so results are deterministic.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from ._launch import interpreted, launch, multiprocessor_count

# (BLOCK_B, BLOCK_M, BLOCK_D, num_warps) autotuned on the GPU; the interpreter (CPU) runs the small one alone.
_SUMS_SHAPES = [(32, 32, 16, 4), (64, 64, 16, 8)]
_GRAD_SHAPES = [(16, 32, 16, 4), (32, 32, 16, 8)]
_INTERPRETER_BLOCKS = {"BLOCK_B": 16, "BLOCK_M": 16, "BLOCK_D": 16, "num_warps": 1}
_MAX_DZ_BLOCK = 64  # widest slice of D one backward program accumulates; larger D splits (and recomputes G)


def _configs(shapes) -> list:
    # maxnreg: without an explicit bound, ptxas (CUDA 12.8 and 13.x) picks its own register target (often 80-128)
    # and spills a few words at some specializations; with one it allocates what the tile needs (110-230)
    return [triton.Config({"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_D": bd}, num_warps=w, num_stages=1, maxnreg=255)
            for bb, bm, bd, w in shapes]


# rows / projections per split are multiples of every BLOCK_B / BLOCK_M: only the last block of a split is ragged
_SPLIT_QUANTUM = max(max(bb, bm) for bb, bm, _, _ in _SUMS_SHAPES + _GRAD_SHAPES)


@triton.jit
def _project_tile(z_tile_ptr, a_tile_ptr, offs_b, offs_m, mask_b, mask_m, D, stride_zb, stride_zd, stride_ad,
                  stride_am, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """x[b, m] = sum_d z[b, d] A[d, m] for one (BLOCK_B, BLOCK_M) tile, float32; masked rows/columns are 0."""
    x = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        z = tl.load(z_tile_ptr + offs_b[:, None] * stride_zb + offs_d[None, :] * stride_zd,
                    mask=mask_b[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        a = tl.load(a_tile_ptr + offs_d[:, None] * stride_ad + offs_m[None, :] * stride_am,
                    mask=mask_d[:, None] & mask_m[None, :], other=0.0).to(tl.float32)
        x = tl.dot(z, a, x, input_precision="ieee")
    return x


@triton.jit
def _knot_start(x):
    """The state before knot 0: cos/sin of angle 0 (1, 0), the identity step (cos/sin 1, 0 of step 0), t_{-1} = 0."""
    zero = tl.zeros([], tl.float32)
    return tl.full(x.shape, 1.0, tl.float32), tl.zeros(x.shape, tl.float32), tl.full(x.shape, 1.0, tl.float32), \
        tl.zeros(x.shape, tl.float32), zero, zero


@triton.jit
def _next_knot(c, s, c1, s1, step, t_prev, x, t_ptr, k):
    """cos/sin(t_k x) from cos/sin(t_{k-1} x) by angle addition (t_{-1} = 0: knot 0 rotates from (1, 0)); the step's
    (c1, s1) = cos/sin((t_k - t_{k-1}) x) are recomputed only when the step differs from the previous one."""
    t_k = tl.load(t_ptr + k)
    new_step = t_k - t_prev
    if new_step != step:
        c1 = tl.cos(x * new_step)
        s1 = tl.sin(x * new_step)
    return c * c1 - s * s1, s * c1 + c * s1, c1, s1, new_step, t_k


@triton.jit
def _accumulate_knot(acc_c, acc_s, c, s, mask_b, offs_k, k):
    """Add the batch sums of cos/sin at knot k (padded rows dropped) to column k of the accumulators."""
    cos_sum = tl.sum(tl.where(mask_b[:, None], c, 0.0), axis=0)
    sin_sum = tl.sum(s, axis=0)  # padded rows have x = 0, so their sin is 0 already
    is_k = offs_k[None, :] == k
    return tl.where(is_k, acc_c + cos_sum[:, None], acc_c), tl.where(is_k, acc_s + sin_sum[:, None], acc_s)


@triton.autotune(configs=_configs(_SUMS_SHAPES), key=["T", "B", "D", "M", "K"])
@triton.jit
def _sums_kernel(z_ptr, a_ptr, t_ptr, out_ptr, T, B, D, M, rows_per_split,
                 stride_zt, stride_zb, stride_zd, stride_ad, stride_am,
                 K: tl.constexpr, K_POW2: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (m block, frame, batch split) -> out[split, 0/1, frame, m block, :] (cos / sin sums over its rows)."""
    pid_m, frame, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = tl.arange(0, K_POW2)
    acc_c = tl.zeros((BLOCK_M, K_POW2), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_M, K_POW2), dtype=tl.float32)
    b_start = split * rows_per_split
    b_end = tl.minimum(b_start + rows_per_split, B)
    for b0 in range(b_start, b_end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < b_end
        x = _project_tile(z_ptr + frame * stride_zt, a_ptr, offs_b, offs_m, mask_b, mask_m, D, stride_zb, stride_zd,
                          stride_ad, stride_am, BLOCK_B, BLOCK_M, BLOCK_D)
        c, s, c1, s1, step, t_prev = _knot_start(x)
        for k in range(K):
            c, s, c1, s1, step, t_prev = _next_knot(c, s, c1, s1, step, t_prev, x, t_ptr, k)
            acc_c, acc_s = _accumulate_knot(acc_c, acc_s, c, s, mask_b, offs_k, k)
    out = out_ptr + split * 2 * T * M * K + frame * M * K + offs_m[:, None] * K + offs_k[None, :]
    mask = mask_m[:, None] & (offs_k[None, :] < K)
    tl.store(out, acc_c, mask=mask)
    tl.store(out + T * M * K, acc_s, mask=mask)


@triton.autotune(configs=_configs(_GRAD_SHAPES), key=["T", "B", "D", "M", "K"])
@triton.jit
def _grad_kernel(z_ptr, a_ptr, t_ptr, coef_ptr, out_ptr, T, B, D, M, cols_per_split,
                 stride_zt, stride_zb, stride_zd, stride_ad, stride_am,
                 K: tl.constexpr, BLOCK_DZ: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (b block, frame x dz slice, projection split) -> out[split, frame, b block, dz slice] =
    sum over its projections m of G[b, m] A[dz slice, m]; coef (2, T, K, M) = t_k * grad of the cos / sin sums."""
    pid_b, pid_td, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_dz = tl.cdiv(D, BLOCK_DZ)
    frame, dz_block = pid_td // num_dz, pid_td % num_dz
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    offs_o = dz_block * BLOCK_DZ + tl.arange(0, BLOCK_DZ)
    mask_o = offs_o < D
    acc = tl.zeros((BLOCK_B, BLOCK_DZ), dtype=tl.float32)
    m_start = split * cols_per_split
    m_end = tl.minimum(m_start + cols_per_split, M)
    coef_c_ptr = coef_ptr + frame * K * M
    coef_s_ptr = coef_c_ptr + T * K * M
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_end
        x = _project_tile(z_ptr + frame * stride_zt, a_ptr, offs_b, offs_m, mask_b, mask_m, D, stride_zb, stride_zd,
                          stride_ad, stride_am, BLOCK_B, BLOCK_M, BLOCK_D)
        c, s, c1, s1, step, t_prev = _knot_start(x)
        g = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
        for k in range(K):
            c, s, c1, s1, step, t_prev = _next_knot(c, s, c1, s1, step, t_prev, x, t_ptr, k)
            # padded projections get zero coefficients, so G is 0 there
            gc = tl.load(coef_c_ptr + k * M + offs_m, mask=mask_m, other=0.0)
            gs = tl.load(coef_s_ptr + k * M + offs_m, mask=mask_m, other=0.0)
            g += gs[None, :] * c - gc[None, :] * s
        a_t = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_o[None, :] * stride_ad,
                      mask=mask_m[:, None] & mask_o[None, :], other=0.0).to(tl.float32)  # A^T tile (BLOCK_M, BLOCK_DZ)
        acc = tl.dot(g, a_t, acc, input_precision="ieee")
    out = out_ptr + ((split * T + frame) * B + offs_b[:, None]) * D + offs_o[None, :]
    tl.store(out, acc, mask=mask_b[:, None] & mask_o[None, :])


def _target_programs(device: torch.device) -> int:
    """Programs to aim for so that the GPU is busy: a few waves over its SMs (in the interpreter, enough that the
    small test shapes still run several splits)."""
    sms = multiprocessor_count(device)
    return 32 if sms is None else 4 * sms


def _split(length: int, others: int, target: int) -> Tuple[int, int]:
    """Split ``length`` into ``n`` ranges (multiples of _SPLIT_QUANTUM) so that n * others reaches ``target``."""
    wanted = max(1, min(triton.cdiv(target, max(others, 1)), triton.cdiv(length, _SPLIT_QUANTUM)))
    per_split = triton.cdiv(triton.cdiv(length, wanted), _SPLIT_QUANTUM) * _SPLIT_QUANTUM
    return triton.cdiv(length, per_split), per_split


def _kernel_and_blocks(kernel, device: torch.device) -> Tuple[object, Dict[str, int]]:
    """The autotuned kernel on a GPU; in the interpreter its JIT function with the one small block configuration."""
    if interpreted(device):
        return kernel.fn, dict(_INTERPRETER_BLOCKS)
    return kernel, {}


def _check(z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> None:
    if z.dim() != 3 or A.dim() != 2 or A.shape[0] != z.shape[2] or t.dim() != 1:
        raise ValueError(
            f"expected z (T,B,D), A (D,M), t (K); got {tuple(z.shape)}, {tuple(A.shape)}, {tuple(t.shape)}"
        )
    if z.dtype == torch.float64 or A.dtype == torch.float64:
        raise TypeError("the Triton SIGReg kernels compute in float32; use the 'cpu' or 'reference' backend for "
                        "float64")


def sigreg_sums(z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z (T,B,D), A (D,M), t (K) -> (2, T, M, K) float32 cos/sin sums over the batch."""
    _check(z, A, t)
    T, B, D = z.shape
    M, K = A.shape[1], t.shape[0]
    t32 = t.to(torch.float32).contiguous()
    n_split, rows = _split(B, T * triton.cdiv(M, _SPLIT_QUANTUM), _target_programs(z.device))
    partial = torch.empty((n_split, 2, T, M, K), device=z.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), T, n_split)

    kernel, blocks = _kernel_and_blocks(_sums_kernel, z.device)
    launch(kernel, grid, z, A, t32, partial, T, B, D, M, rows, *z.stride(), *A.stride(), K=K,
           K_POW2=triton.next_power_of_2(K), **blocks)
    return partial[0] if n_split == 1 else partial.sum(0)


def sigreg_sums_backward(grad: torch.Tensor, z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad (2,T,M,K) of the sums -> dz (T,B,D) in z's dtype."""
    _check(z, A, t)
    T, B, D = z.shape
    M, K = A.shape[1], t.shape[0]
    if grad.shape != (2, T, M, K):
        raise ValueError(f"grad must be (2, T, M, K) = {(2, T, M, K)}, got {tuple(grad.shape)}")
    t32 = t.to(torch.float32).contiguous()
    # d sum_b cos(t_k x) / dx = -t_k sin(t_k x) (sin: t_k cos): fold t_k into the incoming gradient, knot-major so
    # that each knot's coefficients are contiguous over the projections
    coef = (grad.to(torch.float32) * t32).transpose(-1, -2).contiguous()  # (2, T, K, M)
    block_dz = min(max(16, triton.next_power_of_2(D)), _MAX_DZ_BLOCK)
    num_dz = triton.cdiv(D, block_dz)
    n_split, cols = _split(M, T * num_dz * triton.cdiv(B, _SPLIT_QUANTUM), _target_programs(z.device))
    partial = torch.empty((n_split, T, B, D), device=z.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]), T * num_dz, n_split)

    kernel, blocks = _kernel_and_blocks(_grad_kernel, z.device)
    launch(kernel, grid, z, A, t32, coef, partial, T, B, D, M, cols, *z.stride(), *A.stride(), K=K,
           BLOCK_DZ=block_dz, **blocks)
    dz = partial[0] if n_split == 1 else partial.sum(0)
    return dz.to(z.dtype)
