"""The structure of a one-environment CEM plan on the GPU path, as the code records it on meta tensors (no GPU, no
timing): kernel launches per iteration, the grids of the fused kernels against an H100's 132 SMs, and tensor cores
for every predictor GEMM in the ahead-of-time compile report. These are the facts the latency design rests on
(docs/gpu.md); the times they lead to are the cost model's estimate (bench/gpu_model.py), not asserted here."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from lewm_fast import build_lewm  # noqa: E402
from lewm_fast.ops.launches import Launch  # noqa: E402
from lewm_fast.precompile import record_plan_ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMS = 132  # H100 SXM
DEPTH, HORIZON = 6, 5  # the paper predictor's blocks; CEM's horizon
GEMM_KERNELS = ("_adaln_linear_kernel", "_attention_residual_kernel", "_gated_residual_kernel", "_goal_cost_kernel")
ROWS_ARG = {"_adaln_linear_kernel": 8, "_attention_residual_kernel": 6, "_gated_residual_kernel": 5}  # launch arg: rows


@pytest.fixture(scope="module")
def paper_model():
    with torch.device("meta"):
        return build_lewm(action_dim=2).eval()


def _iteration(model, dtype, precision="ieee", n_envs=1):
    """The launches (Triton ``Launch`` or aten op) of one steady CEM iteration (300 x 30, horizon 5, history 1)."""
    ops = record_plan_ops(model, 3, n_envs=n_envs, history=1, dtype=dtype, precision=precision)
    return [op for phase, op in ops if phase == "iter1" and (isinstance(op, Launch) or op.launches_kernel)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launches_per_iteration(paper_model, dtype):
    """Four fused kernels per block and rollout step (pre-norm + QKV; attention + out-projection + gated residual;
    pre-norm + fc1 + GELU; fc2 + gated residual), the head's norm + first Linear + GELU per step, its last Linear
    written straight into the latent buffer (``project_into``: no GEMM, cast and copy launches), the goal cost and
    the refit + sampling once, and the action conditioning as two projections with their SiLUs (Conv1d folded in;
    no convolution, bias add, SiLU or cast launches), the positional embedding added by each step's first pre-norm
    GEMM (no add launch per step): 133 Triton launches and 2 aten ones (the modulations' GEMM and the context copy),
    where there were 152 Triton and 127 aten ones (279 in all)."""
    it = _iteration(paper_model, dtype)
    triton = Counter(op.name for op in it if isinstance(op, Launch))
    assert triton == {
        "_adaln_linear_kernel": 2 * DEPTH * HORIZON + HORIZON,
        "_attention_residual_kernel": DEPTH * HORIZON,
        "_gated_residual_kernel": DEPTH * HORIZON + HORIZON - 1 + 2,
        "_goal_cost_kernel": 1,
        "_elite_refit_sample_kernel": 1,
    }
    aten = Counter(op.name for op in it if not isinstance(op, Launch))
    assert "gelu" not in aten and "layer_norm" not in aten and "native_layer_norm" not in aten
    assert not {"convolution", "silu", "_to_copy", "mm"} & set(aten), aten  # the action conditioning: 2 launches
    assert aten["copy_"] <= 1  # no per-step copies of the predicted latents
    assert "add" not in aten  # the window positions are added in the first block's pre-norm GEMM
    assert len(it) <= 135


def test_growing_window_runs_the_new_token_only(paper_model):
    """Until the window slides (history 1: steps 1-3 of 5 with a 3-frame window) a step computes its new token only
    and attends to the keys / values kept from the steps before (a per-candidate prefix): the QKV pre-norm GEMMs of
    the five steps run 300, 300, 300, 900, 900 rows, where a full window ran 300, 600, 900, 900, 900."""
    it = _iteration(paper_model, torch.bfloat16)
    qkv = [op for op in it if isinstance(op, Launch) and op.name == "_adaln_linear_kernel"
           and op.args[3].shape[0] == 3 * 16 * 64]
    rows = [int(op.args[ROWS_ARG[op.name]]) for op in qkv]
    assert rows == [300] * DEPTH * 3 + [900] * DEPTH * 2
    att = [op for op in it if isinstance(op, Launch) and op.name == "_attention_residual_kernel"]
    assert [(op.kwargs["P"], op.kwargs["S"]) for op in att[::DEPTH]] == [(0, 1), (1, 1), (2, 1), (0, 3), (0, 3)]


@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.bfloat16, "ieee")])
def test_predictor_kernels_fill_the_sms_at_one_env(paper_model, dtype, precision):
    """Every per-step GEMM kernel of a one-env iteration runs at least 66 programs (half an H100) — 64 x 64 tiles ran
    15-45; the goal cost (once per iteration, 300 rows) runs 19 programs of 16 rows."""
    for op in _iteration(paper_model, dtype, precision):
        if not isinstance(op, Launch) or op.name not in GEMM_KERNELS:
            continue
        programs = math.prod(op.grid)
        if op.name == "_goal_cost_kernel":
            assert programs == math.ceil(300 / 16)
        else:
            assert programs >= SMS // 2, (op.name, op.grid)


@pytest.mark.parametrize("dtype, precision", [(torch.bfloat16, "ieee"), (torch.float32, "tf32")])
def test_tensor_core_plans_take_wide_row_tiles(paper_model, dtype, precision):
    """With tensor-core dots the one-env kernels read each weight from L2 fewer times (docs/gpu.md "Step 3"): every
    pre-norm GEMM takes 64-row panels (8 warps; wgmma on sm_90), the 900-row fc2 64 x 32 tiles and the 900-row
    attention + out-projection 32 x 64 tiles; at 300 rows the latter two keep 16 x 32 tiles (wider ones would leave
    fewer than 66 programs)."""
    shapes = Counter()
    for op in _iteration(paper_model, dtype, precision):
        if not isinstance(op, Launch) or op.name not in GEMM_KERNELS[:3]:
            continue
        rows = op.args[ROWS_ARG[op.name]]
        k = op.kwargs
        # a bf16 plan's action conditioning: float32 operands, IEEE / 3xTF32 dots (narrow tiles)
        narrow = op.args[0].dtype == torch.float32 and k["PRECISION"] != "tf32"
        shapes[(op.name, int(rows), k["BLOCK_M"], k["BLOCK_N"], k["num_warps"], narrow)] += 1
    for (name, rows, bm, bn, warps, narrow), n in shapes.items():
        if name == "_adaln_linear_kernel":
            assert (bm, warps) == (64, 8), (name, rows, bm, bn, warps)
        elif name == "_gated_residual_kernel" and rows >= 900 and not narrow:  # fc2; TF32: also the 1500-row
            assert (bm, bn) == (64, 32), (name, rows, bm, bn)                 # action conditioning, modulations
        elif name == "_attention_residual_kernel" and rows == 900:
            assert (bm, bn) == (32, 64), (name, rows, bm, bn)
        else:
            assert (bm, bn) == (16, 32), (name, rows, bm, bn)
    assert {("_gated_residual_kernel", 900), ("_attention_residual_kernel", 900)} <= {k[:2] for k in shapes}


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_exact_float32_plans_keep_16_row_tiles(paper_model, precision):
    """IEEE float32 dots run on the FMA units, whose tiles hold every K slice in registers, and 3xTF32 splits each
    operand in two (wide tiles spill, and overflow sm_80's shared memory): 16-row tiles throughout."""
    for op in _iteration(paper_model, torch.float32, precision):
        if isinstance(op, Launch) and op.name in GEMM_KERNELS:
            assert op.kwargs["BLOCK_M"] == 16, (op.name, op.kwargs)


def test_fifty_envs_walk_columns_first(paper_model):
    """At 50 envs the fused GEMM grids put the output columns on the fastest axis: the programs sharing an A panel
    run together and read it once from HBM. In bf16 the pre-norms stay fused into to_qkv / mlp.net.1 / the head's
    first Linear there too (64-row panels, GELU epilogue: no layer-norm, GEMM or GELU kernels apart); in float32 they
    run apart from their GEMMs, the projection kernel (TF32 here) with the GELU as its epilogue for mlp.net.1 (no
    GELU kernel: its output is written once)."""
    weight_arg = {"_adaln_linear_kernel": 3, "_attention_residual_kernel": 2, "_gated_residual_kernel": 1}
    for dtype, precision, prenorms in ((torch.bfloat16, "ieee", 0), (torch.float32, "tf32", 2 * DEPTH * HORIZON)):
        it = _iteration(paper_model, dtype, precision, n_envs=50)
        assert sum(isinstance(op, Launch) and op.name == "_adaln_layernorm_kernel" for op in it) == prenorms
        checked = 0
        for op in it:
            if isinstance(op, Launch) and op.name in weight_arg:
                n = op.args[weight_arg[op.name]].shape[0]  # output columns
                per_program = op.kwargs["BLOCK_N"] * op.kwargs.get("N_TILES", 1)
                side = int(op.kwargs.get("ADD_POS", False))  # the group writing x + pos (the steps' first block)
                assert op.grid[0] == math.ceil(n / per_program) + side, (op.name, op.grid)
                if op.name == "_adaln_linear_kernel":
                    assert op.kwargs["BLOCK_M"] == 64, op.kwargs
                checked += 1
        # 4 GEMM kernels per block and step (float32: to_qkv's as the projection kernel after the pre-norm), the
        # head's two per step (one on the last), the action conditioning's two; with TF32 also the modulations' GEMM
        # (``TritonOps.linear``: cuBLAS would not use TF32)
        assert checked == 4 * DEPTH * HORIZON + 2 * HORIZON - 1 + 2 + (dtype == torch.float32), (dtype, checked)
        aten = Counter(op.name for op in it if not isinstance(op, Launch))
        assert "gelu" not in aten


def _aot_rows():
    import triton

    path = ROOT / "bench" / "results" / f"triton-aot-{triton.__version__}.json"
    if not path.exists():
        pytest.skip(f"no AOT report for triton {triton.__version__}")
    return json.loads(path.read_text())["kernels"]


def test_every_predictor_gemm_uses_tensor_cores_unless_exact():
    """In the AOT report of the installed triton: each predictor GEMM kernel compiled for bf16 or for TF32 / 3xTF32
    float32 dots uses tensor-core instructions (wgmma or mma.sync); only the exact IEEE float32 mode runs on FMA."""
    rows = [r for r in _aot_rows() if r["kernel"] in GEMM_KERNELS and r.get("error") is None]
    assert rows
    seen = set()
    for r in rows:
        c = r["constexprs"]
        exact = c.get("PRECISION") == "ieee" and "*bf16" not in r["dtypes"] and not c.get("UPCAST")
        seen.add((r["kernel"], exact))
        if not exact:
            assert r["dot_instructions"] in ("wgmma", "mma.sync"), (r["kernel"], c, r["dtypes"])
    assert {(k, False) for k in GEMM_KERNELS} <= seen, "every GEMM kernel has a tensor-core specialization"


def test_planners_default_to_bf16_on_cuda_only():
    """The evidence-based default (docs/gpu.md, bench/results/precision-study-2026-12-07.md): a planner given no
    dtype rolls out in bf16 on CUDA's Triton backend, unless it asks for a float32 precision; float32 elsewhere."""
    from lewm_fast.planning.base import default_planning_dtype

    cuda = torch.device("cuda")
    assert default_planning_dtype(cuda, "triton") == torch.bfloat16
    assert default_planning_dtype(cuda, "triton", "tf32x3") == torch.float32
    assert default_planning_dtype(cuda, "reference") == torch.float32
    assert default_planning_dtype(torch.device("cpu"), "cpu") == torch.float32
    assert default_planning_dtype(torch.device("cpu"), "triton") == torch.float32  # the interpreter


def test_plans_recorded_for_a_small_shared_memory_gpu_keep_16_row_panels(paper_model):
    """The recorder stands for a GPU (SM count, shared memory per program): recorded for an L4-class GPU (58 SMs,
    99 KiB) the one-env bf16 pre-norm GEMMs take 16-row panels, as the GPU itself would pick (and the cost model
    traces each device so)."""
    ops = record_plan_ops(paper_model, 3, 58, 99 * 1024, n_envs=1, history=1, dtype=torch.bfloat16)
    adaln = [op for _, op in ops if isinstance(op, Launch) and op.name == "_adaln_linear_kernel"]
    assert adaln and {op.kwargs["BLOCK_M"] for op in adaln} == {16}
