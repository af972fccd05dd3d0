"""Planning cost fused into the last projection of the final rollout step (Triton):
``cost[m] = sum_d (hidden[m] @ weight[d]^T + bias[d] - goal[m // (M // B), d])^2``.

hidden (M, K) is the activation of ``pred_proj`` (after its first Linear, folded BatchNorm and GELU), weight (D, K)
its last Linear: each program owns BLOCK_M candidates and walks the latent row in BLOCK_D-wide slices (D = 192 is
three slices of 64, no padded columns), so the predicted latent is reduced against the goal in registers and never
written. 16-row programs: a one-env plan's 300 candidates make 19 programs (32-row tiles over 256 columns made 10).
fp32 inputs use the ``precision`` asked for (``"ieee"`` exact, ``"tf32"`` / ``"tf32x3"`` on tensor cores); bf16 inputs
tensor cores with fp32 accumulation; the cost is float32.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._launch import PlanCache, call_signature, interpreted, launch
from ._tile_matmul import SMALL_ROWS, dot_precision, tile_matmul_bias


@triton.jit
def _goal_cost_kernel(
    h_ptr, w_ptr, bias_ptr, goal_ptr, out_ptr,
    M, D, K, rows_per_goal,
    s_hm, s_wd, s_gb,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rm < M
    env = (rm // rows_per_goal).to(tl.int64)
    cost = tl.zeros([BLOCK_M], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        dmask = rd < D
        acc = tile_matmul_bias(
            h_ptr, w_ptr, bias_ptr, rm, rd, mmask, dmask, K, s_hm, s_wd,
            HAS_BIAS, PRECISION, UPCAST, BLOCK_M, BLOCK_D, BLOCK_K,
        )
        mask = mmask[:, None] & dmask[None, :]
        goal = tl.load(goal_ptr + env[:, None] * s_gb + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        diff = tl.where(mask, acc - goal, 0.0)
        cost += tl.sum(diff * diff, axis=1)
    tl.store(out_ptr + rm, cost, mask=mmask)


def goal_cost(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], goal: torch.Tensor,
    precision: str = "ieee",
) -> torch.Tensor:
    """hidden (M, K), weight (D, K), bias (D,) or None, goal (B, D) with B dividing M -> costs (M,) float32.

    Row m is scored against ``goal[m // (M // B)]``. precision: of fp32 dots (module docstring). Inference only. Checks
    and tiles are derived once per argument signature (``PlanCache``).
    """
    plan = _PLANS.get(call_signature(hidden, weight, bias, goal, precision),
                      lambda: _plan(hidden, weight, bias, goal, precision))
    return plan(hidden, weight, bias, goal)


_PLANS = PlanCache()


def _plan(hidden, weight, bias, goal, precision: str) -> Callable[..., torch.Tensor]:
    """Validate a ``goal_cost`` call; -> ``run(hidden, weight, bias, goal)`` for every call of its signature."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a (M, K) tensor, got {getattr(hidden, 'shape', type(hidden).__name__)}")
    if not isinstance(goal, torch.Tensor) or goal.dim() != 2:
        raise ValueError(f"goal must be a (B, D) tensor, got {getattr(goal, 'shape', type(goal).__name__)}")
    m, k = hidden.shape
    b, d = goal.shape
    if weight.shape != (d, k):
        raise ValueError(f"weight must have shape (D={d}, K={k}), got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"bias must have shape ({d},), got {tuple(bias.shape)}")
    if b < 1 or m % b:
        raise ValueError(f"goal's B={b} must divide the number of rows M={m}")
    for name, t in (("weight", weight), ("goal", goal), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    out_device = hidden.device
    if m == 0:
        return lambda hidden, weight, bias, goal: torch.empty(0, device=out_device, dtype=torch.float32)
    upcast = interpreted(hidden.device)  # CPU tensors: the Triton interpreter (exact fp32 dots only)
    dot = dot_precision(hidden.dtype, precision)
    block_d = max(16, min(64, triton.next_power_of_2(d)))
    fp32 = upcast or hidden.dtype == torch.float32  # fp32 operands (FMA dots, 3xTF32 splits) spill at 64-wide K
    block_m = 16 if (m <= SMALL_ROWS or fp32) else 32  # and at 32-row tiles with triton 3.6 (sm_90)
    block_k = max(16, min(32 if fp32 else 64, triton.next_power_of_2(k)))
    copy_h = hidden.stride(-1) != 1
    ints = (m, d, k, m // b, k if copy_h else hidden.stride(0), k, d)  # weight and goal are made contiguous
    consts = dict(HAS_BIAS=bias is not None, PRECISION=dot, UPCAST=upcast,
                  BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=4, num_stages=3)

    def run(hidden, weight, bias, goal):
        out = torch.empty(m, device=hidden.device, dtype=torch.float32)
        weight = weight.contiguous()
        launch(_goal_cost_kernel, (triton.cdiv(m, block_m),), hidden.contiguous() if copy_h else hidden, weight,
               bias if bias is not None else weight, goal.contiguous(), out, *ints, **consts)
        return out

    return run
