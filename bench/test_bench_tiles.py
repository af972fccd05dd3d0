"""The one-environment tile choice (docs/gpu.md "Step 3"), measured: each fused rollout kernel at a one-env plan's
300 and 900 rows (paper model, bf16 weights) with the wide tiles the code picks for tensor-core dots and with the
16-row tiles it used before, beside the reference ops (``PredictorOps``: torch / cuBLAS) in the same run. The cost
model says the 16-row tiles are bound by the L2 -> SM feed (``bench/gpu_model.py``); this is the measurement that
confirms or refutes it. CUDA only: the Triton interpreter's timings say nothing about tiles. ``extra_info`` records
each launch's tile, warps and program count."""

import math

import pytest
import torch

from lewm_fast.kernels import adaln_linear, attention_residual, gated_residual
from lewm_fast.ops.launches import record_launches
from lewm_fast.ops.predictor import PredictorOps

D, INNER, HEADS, MLP = 192, 1024, 16, 2048
MODULES = (adaln_linear, attention_residual, gated_residual)
CASES = ["qkv", "fc1", "attention", "fc2"]


@pytest.fixture
def tiles(request, monkeypatch):
    """"wide": the code's choice on this GPU; "narrow": the 16-row tiles (the SM count patched so large that no wide
    tile gives half the SMs a program). Plans cached under the other choice are dropped before and after."""
    if request.param == "narrow":
        for mod in MODULES:
            monkeypatch.setattr(mod, "multiprocessor_count", lambda device: 1 << 20)
    for mod in MODULES:
        mod._PLANS.clear()
    yield request.param
    for mod in MODULES:
        mod._PLANS.clear()


def _inputs(case: str, rows: int, device: torch.device):
    """(kernel call, reference call, meta call) for one case; 900 rows = 300 candidates x 3 window tokens, 300 rows =
    the new token of a growing window (attention: with a 2-token per-candidate prefix, as the kept keys / values)."""
    g = torch.Generator(device=device).manual_seed(0)
    s = rows // 300
    bf16 = torch.bfloat16

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    x = randn(300, s, D)
    mods = randn(300, s, 6, D, dtype=bf16, scale=0.1)
    if case in ("qkv", "fc1"):
        n = 3 * INNER if case == "qkv" else MLP
        w, b = randn(n, D, dtype=bf16, scale=D ** -0.5), randn(n, dtype=bf16)
        act = "none" if case == "qkv" else "gelu"
        args = (x, mods[:, :, 0], mods[:, :, 1] + 1, 1e-6, 1e-6, w, b, act)
        return (lambda: adaln_linear.adaln_linear(*args), lambda: PredictorOps().adaln_linear(*args),
                lambda a: adaln_linear.adaln_linear(*a), args)
    gate = mods[:, :, 2]
    if case == "attention":
        qkv = randn(300, s, 3 * INNER, dtype=bf16)
        prefix = randn(300, 2, 3 * INNER, dtype=bf16) if s == 1 else None
        w, b = randn(D, INNER, dtype=bf16, scale=INNER ** -0.5), randn(D)
        args = (x, qkv, HEADS, w, b, gate, prefix)
        return (lambda: attention_residual.attention_residual(*args),
                lambda: PredictorOps().attention_residual(*args),
                lambda a: attention_residual.attention_residual(*a), args)
    a = randn(300, s, MLP, dtype=bf16)
    w, b = randn(D, MLP, dtype=bf16, scale=MLP ** -0.5), randn(D)
    args = (x, a, w, b, gate)
    return (lambda: gated_residual.gated_residual(*args), lambda: PredictorOps().gated_residual(*args),
            lambda a_: gated_residual.gated_residual(*a_), args)


def _launch_info(meta_call, args) -> dict:
    """BLOCK_M / BLOCK_N / warps / programs of the kernel's launch, recorded on meta copies of the arguments."""
    meta = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in args)
    with record_launches(torch.cuda.get_device_properties(0).multi_processor_count) as launches:
        meta_call(meta)
    (launch,) = launches
    kw = launch.kwargs
    return {"block_m": kw["BLOCK_M"], "block_n": kw["BLOCK_N"], "n_tiles": kw.get("N_TILES", 1),
            "warps": kw["num_warps"], "programs": math.prod(launch.grid)}


@pytest.mark.parametrize("tiles", ["wide", "narrow", "reference"], indirect=True)
@pytest.mark.parametrize("rows", [300, 900])
@pytest.mark.parametrize("case", CASES)
def test_bench_tiles(run_bench, device, is_cuda, case, rows, tiles):
    if not is_cuda:
        pytest.skip("CUDA only: the interpreter's timings say nothing about tiles")
    call, reference, meta_call, args = _inputs(case, rows, device)
    info = {} if tiles == "reference" else _launch_info(meta_call, args)
    if tiles == "narrow" and info["block_m"] != 16:
        pytest.fail(f"the narrow variant launched {info}")
    with torch.no_grad():
        run_bench(reference if tiles == "reference" else call, rounds_cuda=200, case=case, rows=rows, tiles=tiles,
                  **info)
