"""The GPU cost model (``bench/gpu_model.py``, an estimate) on the tiny model: structural facts only.

Launch lists traced from the code on meta tensors (``lewm_fast.precompile.record_plan_ops`` / ``record_aten_ops``)
and what the model makes of them: counts per CEM iteration that add up, every Triton launch either matched to the AOT
report or listed as missing from it, a finite plan time per device. No timing of this machine is asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_devices  # noqa: E402
import gpu_trace  # noqa: E402

from lewm_fast.precompile import AtenOp, interleave, record_aten_ops  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return gpu_trace.tiny_config_overrides()


@pytest.fixture(scope="module")
def ours(tiny):
    return gpu_trace.trace_plan(1, 1, torch.float32, config=tiny)


@pytest.fixture(scope="module")
def swm(tiny):
    return gpu_trace.trace_swm(1, 1, config=tiny)


def _check_counts(trace):
    c = trace.counts()
    assert c["launches_per_iteration"] > 0
    assert c["launches_per_iteration"] == sum(c["triton_per_iteration"].values()) + sum(c["aten_per_iteration"].values())
    assert c["launches_per_plan"] == sum(c["launches_by_phase"].values()) + (trace.n_steps - gpu_trace.TRACED_STEPS) * \
        c["launches_by_phase"]["iter1"]
    return c


def test_lewm_fast_iteration_counts_add_up_and_do_not_depend_on_envs(ours, tiny):
    c = _check_counts(ours)
    assert c["triton_per_iteration"], "the fused planner launches Triton kernels every iteration"
    assert c["syncs_per_iteration"] == 0, "no host sync inside the planning loop"
    assert ours.captured
    two = gpu_trace.trace_plan(2, 1, torch.float32, config=tiny)
    assert two.counts()["triton_per_iteration"] == c["triton_per_iteration"]
    assert two.launches_per_iteration == ours.launches_per_iteration


def test_adapter_at_history_3_is_captured_and_launches_less_than_lewm_fast(tiny):
    adapter = gpu_trace.trace_plan(1, 3, torch.float32, history_pairing="swm", config=tiny)
    c = _check_counts(adapter)
    assert adapter.captured
    assert c["syncs_per_iteration"] == 0, "no host sync inside the planning loop"
    plain = gpu_trace.trace_plan(1, 3, torch.float32, config=tiny)
    assert adapter.launches_per_iteration <= plain.launches_per_iteration  # T - H + 1 steps, no shared prefix


def test_stable_worldmodel_loop_launches_more_than_lewm_fast(ours, swm):
    c = _check_counts(swm)
    assert c["triton_per_iteration"] == {}
    assert c["syncs_per_iteration"] >= 1, "stable-worldmodel reads the elite costs back every iteration"
    assert 0 < c["encode_launches_per_iteration"] < c["launches_per_iteration"]
    assert swm.launches_per_iteration > ours.launches_per_iteration
    cached = swm.launches_per_iteration - swm.encode_launches_per_iteration
    assert cached > ours.launches_per_iteration


def test_aten_recorder_fuses_attention_and_records_host_reads_in_order():
    q = torch.empty(4, 2, 3, 8, device="meta")
    with torch.inference_mode(), record_aten_ops() as ops:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        y = torch.nn.functional.dropout(out, 0.1, training=False)  # eval dropout: no kernel
        (y * 2).sum().tolist()
    names = [op.name for op in ops if op.launches_kernel]
    assert names == ["scaled_dot_product_attention", "mul", "sum", "device_to_host"]
    assert all(isinstance(op, AtenOp) for op in ops)
    assert interleave([], ops) == list(ops)


def test_model_matches_every_triton_launch_to_the_report_or_lists_it_and_gives_finite_times(tmp_path, tiny):
    out = tmp_path / "model.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the report matching specializes kernels
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_model.py"), "--config", "tiny", "--device", *gpu_devices.DEVICES,
         "--envs", "1", "--history", "1", "--dtype", "float32", "--json", str(out), "--top", "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["estimate"].startswith("ESTIMATE")
    assert set(res["devices"]) == set(gpu_devices.DEVICES)
    for key, entry in res["devices"].items():
        for label, match in entry["aot_match"].items():
            triton = sum(res["traces"][label]["triton_per_iteration"].values())
            assert (match["triton_launches"] > 0) == (triton > 0)
            assert 0 <= match["matched"] <= match["triton_launches"]
            if match["matched"] < match["triton_launches"]:  # each unmatched launch is listed as missing
                assert match["missing"] and set(match["missing"]) <= set(res["aot_missing"]), (key, label)
        for plan in entry["plans"]:
            assert plan["plan_ms"] > 0 and plan["plan_ms"] == plan["plan_ms"] and plan["plan_ms"] != float("inf")
            assert plan["gpu_ms_per_iteration"] > 0
            assert (plan["graph_ms"] is not None) == plan["captured"]
        assert any(r["ratio"] > 0 for r in entry["ratios"])
