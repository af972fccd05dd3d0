"""The GPU cost model's estimate (an ESTIMATE) beside what ``bench/device_run.sh`` measured, plan by plan.

    python bench/gpu_model_compare.py OUT_DIR [--model OUT_DIR/gpu-model.json]

Reads, from OUT_DIR: gpu-model.json (``bench/gpu_model.py --json``), the pytest-benchmark JSON of
``bench/test_bench_plan.py`` (``*-plan.json``: CEMPlanner fp32 / bf16 with its CUDA graph, the eager reference
planner; latent context of 3 frames, 1 and 50 envs), profile-*env.txt (``bench/profile_plan.py``: CEMPlanner fp32
without the graph) and first-plan-warmup.txt (``bench/first_plan.py``: the second plan, fp32, graph). Prints one row
per measurement that has an estimate: measured, estimated [fast - slow], measured / estimated. The ratio column is
what a recalibration of ``bench/gpu_devices.py`` would start from.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

IMPLS = {  # test_bench_plan impl -> (estimate label prefix, dtype, which time)
    "fast": ("lewm_fast", "float32", "plan_ms"),
    "fast_bf16": ("lewm_fast", "bfloat16", "plan_ms"),
    "reference": ("lewm_fast reference", "float32", "plan_ms"),
}


def _plans(model: dict) -> Tuple[str, Dict[str, dict]]:
    key, entry = next(iter(model["devices"].items()))
    return entry["device"]["name"], {p["label"]: p for p in entry["plans"]}


def measurements(out: Path) -> List[Tuple[str, str, str, float]]:
    """(what was measured, estimate label, estimate field, measured ms)."""
    rows = []
    for path in sorted(glob.glob(str(out / "*-plan.json"))):
        for bench in json.loads(Path(path).read_text()).get("benchmarks", []):
            info = bench.get("extra_info", {})
            impl = IMPLS.get(info.get("impl"))
            if impl is None or info.get("n_steps") != 30:
                continue
            envs = info.get("envs", 1)
            label = f"{impl[0]} envs={envs} H=3 {impl[1]}"
            rows.append((f"bench {info['impl']} {envs} env (median)", label, impl[2], 1e3 * bench["stats"]["median"]))
    for path in sorted(glob.glob(str(out / "profile-*env.txt"))):
        m = re.search(r"^plan: (\d+) env\(s\), 300 samples, 30 iterations, (fp32|bf16): ([\d.]+) ms per plan",
                      Path(path).read_text(), re.M)
        if m:
            dtype = "float32" if m.group(2) == "fp32" else "bfloat16"
            rows.append((f"profile_plan {m.group(1)} env, no graph", f"lewm_fast envs={m.group(1)} H=3 {dtype}",
                         "eager_ms", float(m.group(3))))
    first = out / "first-plan-warmup.txt"
    if first.exists():
        m = re.search(r"second plan: ([\d.]+) ms\s+\((\d+) env\(s\), history (\d+), (fp32|bf16)", first.read_text())
        if m:
            dtype = "float32" if m.group(4) == "fp32" else "bfloat16"
            rows.append(("first_plan: second plan", f"lewm_fast envs={m.group(2)} H={m.group(3)} {dtype}", "plan_ms",
                         float(m.group(1))))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bench/device_run.sh's output folder")
    parser.add_argument("--model", type=Path, default=None, help="default: OUT/gpu-model.json")
    args = parser.parse_args(argv)
    model_path = args.model or args.out / "gpu-model.json"
    if not model_path.exists():
        print(f"no estimate at {model_path}")
        return 1
    model = json.loads(model_path.read_text())
    device, plans = _plans(model)
    git = model["git"]
    print(f"estimate ({model['model_version']}, {device}; {model['estimate'].split(':')[0]}) vs measured on this "
          f"machine; traced: git {git['commit']}{' + working-tree changes' if git.get('working_tree_modified') else ''}")
    rows = measurements(args.out)
    if not rows:
        print("no plan measurement found (bench plan JSON, profile_plan or first_plan output)")
        return 0
    print(f"{'measurement':36} {'estimate':48} {'measured':>10} {'estimated':>10} {'range':>19} {'meas/est':>8}")
    for what, label, fld, measured in rows:
        plan = plans.get(label)
        if plan is None or plan.get(fld) is None:
            print(f"{what:36} {label + ' (' + fld + ')':48} {measured:10.1f} {'-':>10}")
            continue
        est = plan[fld]
        rng = plan.get("plan_ms_range") if fld == "plan_ms" else None
        rng_s = f"[{rng[0]:.1f} - {rng[1]:.1f}]" if rng else ""
        print(f"{what:36} {label + ' (' + fld.replace('_ms', '') + ')':48} {measured:10.1f} {est:10.1f} {rng_s:>19} "
              f"{measured / est:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
