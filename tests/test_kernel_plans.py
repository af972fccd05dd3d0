"""The Triton wrappers of a plan's hot path validate and tile once per argument signature (``PlanCache``): repeated
calls with the same shapes, strides, dtypes and devices only launch. Checked on meta tensors (recorded launches)."""

from __future__ import annotations

import importlib

import pytest
import torch

from lewm_fast.ops.launches import record_launches

pytest.importorskip("triton")

M, S, D, N, HEADS = 6, 3, 32, 48, 2


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


CALLS = {
    "adaln_linear": lambda k, x: k.adaln_linear(x, x, x, 1e-6, 1e-6, meta(N, D), meta(N), "gelu"),
    "gated_residual": lambda k, x: k.gated_residual(x, meta(x.shape[0], S, N), meta(D, N), meta(D), x),
    "attention_residual": lambda k, x: k.attention_residual(x, meta(x.shape[0], S, 3 * HEADS * 16), HEADS, meta(D, HEADS * 16),
                                                            meta(D), x),
    "goal_cost": lambda k, x: k.goal_cost(x.reshape(-1, D), meta(D, D), meta(D), meta(x.shape[0], D)),
}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_one_plan_per_signature(op, monkeypatch):
    module = importlib.import_module(f"lewm_fast.kernels.{op}")
    module._PLANS.clear()
    built = []
    plan = module._plan
    monkeypatch.setattr(module, "_plan", lambda *a: built.append(1) or plan(*a))
    with record_launches() as launches:
        for _ in range(3):
            CALLS[op](module, meta(M, S, D))
        CALLS[op](module, meta(M + 1, S, D))  # another shape: a second plan
    assert len(built) == 2 and len(module._PLANS) == 2
    assert len(launches) == 4
    assert launches[0].grid == launches[1].grid == launches[2].grid and launches[0].kwargs == launches[2].kwargs
    assert launches[3].args[0] is not launches[0].args[0]  # the new call's tensors, not the cached call's


def test_bad_calls_are_not_cached_and_raise_each_time():
    from lewm_fast.kernels import gated_residual as module

    module._PLANS.clear()
    x = meta(M, S, D)
    for _ in range(2):
        with pytest.raises(ValueError, match="weight must be a row-major"):
            module.gated_residual(x, meta(M, S, N), meta(D, N + 1), None, x)
        with pytest.raises(ValueError, match="must be a 3-d"):
            module.gated_residual(x, [1, 2], meta(D, N), None, x)  # unhashable: not cached either
    assert len(module._PLANS) == 0


def test_cache_is_bounded():
    from lewm_fast.kernels._launch import PlanCache, call_signature

    cache = PlanCache(capacity=2)
    for rows in (1, 2, 3):
        assert cache.get(call_signature(meta(rows, 4), "ieee"), lambda: rows) == rows
    assert len(cache) == 2
    assert cache.get(call_signature(meta(1, 4), "ieee"), lambda: "rebuilt") == "rebuilt"  # the oldest was dropped
    assert cache.get(call_signature(meta(3, 4), "ieee"), lambda: "rebuilt") == 3


def test_plans_are_kept_per_recorded_sm_count():
    """Tiles follow the SM count: a plan recorded for an A100 (108 SMs) is not reused when recording for an H100
    (132), as the ahead-of-time check records both in one process. A 300-row bf16 QKV takes 4 column tiles per
    program with 108 SMs (60 programs >= 54) and 2 with 132 (60 < 66)."""
    from lewm_fast.kernels import adaln_linear

    x = torch.empty(300, 1, 192, device="meta")
    w = torch.empty(3072, 192, device="meta", dtype=torch.bfloat16)
    tiles = []
    for sms in (108, 132, 108):
        with record_launches(sm_count=sms) as launches:
            adaln_linear.adaln_linear(x, x, x, 1e-6, 1e-6, w, None)
        tiles.append(launches[0].kwargs["N_TILES"])
    assert tiles == [4, 2, 4]
