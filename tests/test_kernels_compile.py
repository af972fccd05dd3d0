"""Every Triton kernel compiles for real GPUs: ahead-of-time compile checks for sm_80 and sm_90 without a GPU.

The interpreter tests check the kernels' numerics; these check that the same code is GPU code: every specialization
the code launches (recorded from the real code paths on meta tensors, ``lewm_fast.aot``) compiles to cubin with the
ptxas shipped in the triton wheel, with no register spill and shared memory within the target's limit. They run
``python -m lewm_fast.aot`` in a subprocess without TRITON_INTERPRET (under the interpreter ``@triton.jit`` makes
interpreted functions, which cannot be compiled).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from lewm_fast import aot  # noqa: E402
from lewm_fast.kernels._launch import record_launches  # noqa: E402
from lewm_fast.precompile import record_plan_launches, record_sigreg_launches, warmup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _compiler_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _launched_kernels() -> set:
    """Every ``@triton.jit`` function named ``*_kernel`` in kernels/ (the launched ones; the rest are inlined helpers)."""
    names = set()
    for path in (ROOT / "kernels").glob("*.py"):
        names |= set(re.findall(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+_kernel)\(", path.read_text()))
    return names


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lewm_fast.aot", "--out", str(out), "--quiet", "--workers", str(max(2, os.cpu_count() or 1))],
        env=_compiler_env(), capture_output=True, text=True, timeout=1500,
    )
    assert out.exists(), f"the compile check wrote no report (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc


@pytest.mark.slow
def test_every_launched_specialization_compiles_for_sm80_and_sm90_without_spills(report):
    data, proc = report
    lines = [f"{f['kernel']} sm_{f['arch']} {f['constexprs']}: {'; '.join(f['problems'])} [{f['origin']}]"
             for f in data["failures"]]
    assert not lines, "\n".join(lines)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert data["arches"] == [80, 90]
    for arch in (80, 90):
        compiled = {row["kernel"] for row in data["kernels"] if row["arch"] == arch}
        assert compiled == _launched_kernels(), f"sm_{arch}: kernels never launched by the recorded paths"
    for row in data["kernels"]:
        assert row["registers"] is not None and row["cubin_bytes"] > 0
        assert row["shared_bytes"] <= aot.SHARED_MEMORY_LIMIT[row["arch"]]


@pytest.mark.slow
def test_report_covers_the_refit_kernel_and_every_sigreg_autotune_config(report):
    data, _ = report
    refit = [r for r in data["kernels"] if r["kernel"] == "_elite_refit_sample_kernel" and r["constexprs"]["REFIT"]]
    assert {r["arch"] for r in refit} == {80, 90}
    assert any(r["constexprs"]["SAMPLE"] for r in refit) and any(not r["constexprs"]["SAMPLE"] for r in refit)
    from lewm_fast.kernels import sigreg

    for kernel, configs in (("_sums_kernel", sigreg._SUMS_SHAPES), ("_grad_kernel", sigreg._GRAD_SHAPES)):
        at_paper_shape = {(r["constexprs"]["BLOCK_B"], r["constexprs"]["BLOCK_M"], r["constexprs"]["BLOCK_D"], r["num_warps"])
                          for r in data["kernels"] if r["kernel"] == kernel and r["arch"] == 90
                          and "paper sigreg (4, 128, 192, 1024) float32" in r["origins"]}
        assert at_paper_shape == set(configs)


@pytest.mark.slow
def test_compile_check_fails_on_a_compile_error_and_on_spills():
    """The check can fail: a plain Python global read inside @jit (which the interpreter accepts) is a compile error,
    a 64x64 fp32 dot chain on one warp spills; a clean kernel passes."""
    env = _compiler_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", "import aot_samples; aot_samples.main()"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["kernel"]: r["problems"] for r in map(json.loads, proc.stdout.splitlines())}
    assert any("Cannot access global variable _LIMIT" in p for p in rows["_global_read_kernel"])
    assert any(p.startswith("register spills") for p in rows["_spilling_kernel"])
    assert rows["_fine_kernel"] == []


def test_ptxas_log_parsing_and_problem_rules():
    log = ("ptxas info    : Function properties for k\n    40 bytes stack frame, 8 bytes spill stores, 12 bytes spill "
           "loads\nptxas info    : Used 168 registers, used 1 barriers, 40 bytes cumulative stack size\n")
    parsed = aot.parse_ptxas_log(log)
    assert parsed == {"registers": 168, "stack_frame": 40, "spill_stores": 8, "spill_loads": 12}
    row = {"arch": 90, "error": None, "shared_bytes": 1024, **parsed}
    assert aot.problems(row) == ["register spills: 8 bytes stored, 12 bytes loaded"]
    row.update(spill_stores=0, spill_loads=0, shared_bytes=aot.SHARED_MEMORY_LIMIT[80] + 1, arch=80)
    assert aot.problems(row) == [f"shared memory {row['shared_bytes']} bytes > sm_80's {aot.SHARED_MEMORY_LIMIT[80]}"]
    assert aot.problems({**row, "arch": 90}) == []
    assert aot.problems({**row, "registers": None, "arch": 90}) == ["no ptxas register report"]


def test_plan_launches_are_recorded_from_the_planner_loop(tiny_model):
    launches = record_plan_launches(tiny_model, n_envs=2, history=3, num_samples=16, topk=4, horizon=3)
    names = [x.name for x in launches]
    assert set(names) == {"_elite_refit_sample_kernel", "_adaln_linear_kernel", "_attention_residual_kernel",
                          "_gated_residual_kernel", "_goal_cost_kernel"}
    refits = [x.kwargs for x in launches if x.name == "_elite_refit_sample_kernel"]
    # first sampling, the fused refit + sampling of iteration 0, the final refit
    assert [(k["REFIT"], k["SAMPLE"]) for k in refits] == [(False, True), (True, True), (True, False)]
    assert all(isinstance(a, torch.Tensor) and a.device.type == "meta" for x in launches for a in x.args
               if isinstance(a, torch.Tensor))
    # the tiny model's window is 3 frames with history 3: shared prefixes give window attention launches with P > 0
    assert any(x.kwargs["P"] > 0 for x in launches if x.name == "_attention_residual_kernel")
    # nothing of the real model was touched
    assert all(p.device.type == "cpu" for p in tiny_model.parameters())


def test_sigreg_launches_expand_over_autotune_configs():
    launches = record_sigreg_launches((4, 128, 192, 1024), sm_count=132)
    assert [x.name for x in launches] == ["_sums_kernel", "_grad_kernel"]
    from lewm_fast.kernels import sigreg

    assert len(launches[0].variants()) == len(sigreg._SUMS_SHAPES)
    assert all(kw["maxnreg"] == 255 and kw["K"] == 17 for _, kw in launches[0].variants())


def test_meta_tensors_outside_a_recording_are_refused():
    from lewm_fast.kernels.adaln_linear import adaln_linear

    x = torch.empty(4, 3, 32, device="meta")
    w = torch.empty(16, 32, device="meta")
    with pytest.raises(RuntimeError, match="record_launches"):
        adaln_linear(x, x, x, 1e-6, 1e-6, w, None)
    with record_launches() as launches:
        adaln_linear(x, x, x, 1e-6, 1e-6, w, None)
    assert len(launches) == 1 and launches[0].name == "_adaln_linear_kernel"


def test_warmup_on_cpu_compiles_nothing_and_checks_its_arguments(tiny_model):
    from lewm_fast import CEMPlanner

    report = warmup(tiny_model, n_envs=(1, 2))
    assert report.launches == 0 and report.device == "cpu"
    planner = CEMPlanner(tiny_model, num_samples=8, topk=2, n_steps=1, horizon=2, receding_horizon=2, seed=0)
    assert warmup(planner).launches == 0
    with pytest.raises(TypeError, match="come from the planner"):
        warmup(planner, num_samples=8)
    with pytest.raises(TypeError, match="unknown planner settings"):
        warmup(tiny_model, samples=8)
    with pytest.raises(TypeError, match="planner or a LeWM"):
        warmup("model")


def test_stable_worldmodel_pairing_records_its_own_launches(tiny_model):
    """The adapter's planners (history_pairing="swm") are warmed up and AOT-checked on their own launches: at history
    > 1 each candidate's window holds its own blocks 0..H-1, so no attention has a shared prefix (P = 0) and only
    T - H + 1 steps are rolled out, unlike the plain planners at the same history."""
    from lewm_fast.integrations.stable_worldmodel import _SwmCEM

    kwargs = dict(num_samples=16, topk=4, horizon=3)
    paired = record_plan_launches(tiny_model, 2, 3, history_pairing="swm", **kwargs)
    plain = record_plan_launches(tiny_model, 2, 3, **kwargs)
    attention = [x.kwargs["P"] for x in paired if "P" in x.kwargs]
    assert attention and not any(attention)
    assert any(x.kwargs["P"] for x in plain if "P" in x.kwargs) and len(paired) < len(plain)
    planner = _SwmCEM(tiny_model, num_samples=8, topk=2, n_steps=1, horizon=3, receding_horizon=3, seed=0)
    assert warmup(planner).launches == 0  # on CPU nothing compiles, but the planner is recognised


def test_aot_cli_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "lewm_fast.aot", "--arch", "60"], env=_compiler_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "compute capability 7.0 or newer" in proc.stderr
