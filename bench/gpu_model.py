"""GPU cost model of CEM plans: an ESTIMATE of lewm_fast's and stable-worldmodel's plan times on a GPU, made without one.

    python bench/gpu_model.py [--device h100|a100|l4|4090|auto ...] [--envs 1 50] [--dtype float32 bfloat16]
                              [--history 1 3] [--sensitivity] [--top 8] [--json OUT]

Nothing here is a measurement. Method (ported from the 2026-12-07 paper estimate, /work/shared/notes/
gpu-estimate-2026-12-07.md, and improved):

1. Launch lists come from the real code on meta tensors (``bench/gpu_trace.py``): every Triton launch (kernel, grid,
   constexprs) and aten op (shapes, dtypes) of lewm_fast's CEM plan (``CEMPlanner``; the stable-worldmodel adapter's
   planner, ``history_pairing="swm"``), of lewm_fast's eager reference planner, and of stable-worldmodel's eager CEM
   loop through the test suite's stand-ins.
2. Registers, shared memory and the dot instructions (wgmma / mma.sync / none = FMA units) of each Triton launch come
   from the AOT report (``bench/results/triton-aot-<triton>.json``, ``python -m lewm_fast.aot``), matched by kernel
   name, constexprs, warps, stages and pointer dtypes exactly as ``lewm_fast.aot`` specializes them. A launch that is
   not in the report is listed as missing and gets the stated defaults (``Assumptions.default_regs`` /
   ``default_smem``; FMA for fp32 dots, mma.sync otherwise).
3. Per launch, t = max(floor, compute, L2->SM feed, DRAM bytes): Triton GEMM-epilogue kernels from their tiling
   (programs, resident CTAs per SM from registers / shared memory / warps, waves, per-SM FMA or tensor-core rate);
   cuBLAS GEMMs from peak x efficiency x SM fill (128x128 tiles, split-K when short of SMs); everything else from
   bytes moved. Devices and every assumption: ``bench/gpu_devices.py``.
4. Plans: captured CUDA graph = sum(t + per-node cost) + one graph launch; eager = an event simulation where the host
   issues each kernel after its host cost and the GPU runs them in order (host syncs wait for the GPU).

Launch counts per CEM iteration (``gpu_trace.Trace.counts()``) are structural facts of the code; times are estimates
(the paper estimate judged absolute times +-30-50 %; ``--sensitivity`` gives its fast / slow bounds).

Compared with the paper estimate's stable-worldmodel trace (713 launches per iteration at H=1, 435 at H=3, its
device-to-host sync included; traced on stable-worldmodel 0.1.1 with cached embeddings), the stand-ins' loop makes
1093 / 799 kernel launches + 1 sync:
  + 332 / 333  the ViT re-encodes the context and goal frames in every ``get_cost`` call (the stand-ins do, as
               ``LeWM.rollout`` / ``get_cost`` do in stable-worldmodel versions without an ``info["emb"]`` cache);
               reported apart as ``swm eager, encoder cached`` (761 / 466), the note's assumption;
  +  28 /  21  ATen decomposition launches the note's logger could not see (under ``torch.inference_mode()`` it met
               ``reshape`` / ``linear`` undecomposed): a copy per attention output (transpose + reshape), and bmm +
               bias add for the action encoder's Linear on a transposed input;
  +  21 /  11  the stand-ins' code is not 0.1.1's (counted the note's way the cached stand-in loop makes 733 / 445
               kernels, the note 712 / 434; e.g. the stand-in runs the action encoder in each of the 5 / 3 rollout
               steps); not attributed op by op.
Also: stable-worldmodel's CEM accepts one env per solve only (``batch_size=1``, its default; its ``criterion``
fails for 1 < B != S, see ``gpu_trace.trace_swm``), so n envs are costed as n one-env plans; the note's batched
50-env figure (3.70 s on H100) has no runnable counterpart.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_devices as GD  # noqa: E402
import gpu_trace as GT  # noqa: E402
from gpu_costs import AotReport, Cost, CostModel, _tensors, default_report_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ESTIMATE = ("ESTIMATE: roofline + launch-overhead model on launch lists traced from the code on meta tensors; no GPU "
            "was used. Absolute times +-30-50 %; see --sensitivity.")


# ---------------------------------------------------------------------------------------------------- per plan
@dataclass
class PlanEstimate:
    label: str
    impl: str
    device: str
    n_envs: int
    history: int
    dtype: str
    captured: bool
    launches_per_iteration: int
    launches_per_plan: int
    gpu_ms_per_iteration: float
    host_ms_per_iteration: float  # eager issue cost (0 for a replayed graph)
    graph_ms: Optional[float]  # captured CUDA graph replay (None when the path is not captured)
    eager_ms: float  # host-simulated eager run
    plan_ms: float  # what the code does by default: graph_ms when captured, else eager_ms
    bound: str
    gpu_ms_by_bound: Dict[str, float]
    kernels: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _phase_runs(trace: GT.Trace) -> List[Tuple[str, List[int], int]]:
    """(phase, event indices, repeats) in plan order: the steady iteration repeats for the untraced iterations."""
    runs: List[Tuple[str, List[int], int]] = []
    for i, e in enumerate(trace.events):
        if runs and runs[-1][0] == e.phase:
            runs[-1][1].append(i)
        else:
            runs.append((e.phase, [i], 1))
    extra = trace.n_steps - GT.TRACED_STEPS
    return [(p, idx, 1 + extra if p == "iter1" else 1) for p, idx, _ in runs]


def simulate_eager(trace: GT.Trace, costs: List[Cost], dev: GD.Device, a: GD.Assumptions) -> Tuple[float, float]:
    """-> (elapsed seconds of the plan, host seconds per steady iteration). The host issues event i after its host
    cost; the GPU starts it at max(issue + launch latency, previous end); a sync waits for the GPU."""
    module_driven = trace.impl in ("swm eager", "lewm_fast reference")

    def host_cost(e: GT.Event) -> float:
        if e.kind == "sync":
            return 0.0
        if module_driven:
            return a.host_eager_module_s
        return a.host_triton_s if e.kind == "triton" else a.host_aten_s

    h = g = 0.0
    host_iter = 0.0
    for phase, idx, repeats in _phase_runs(trace):
        per_iter = (a.host_views_per_iter_s if phase.startswith("iter") and not module_driven else 0.0)
        if phase == "iter1":
            host_iter = per_iter + sum(host_cost(trace.events[i]) for i in idx)
        for _ in range(repeats):
            h += per_iter
            for i in idx:
                e, c = trace.events[i], costs[i]
                if e.kind == "sync":
                    h = max(h, g) + c.t
                    continue
                h += host_cost(e)
                g = max(h + dev.launch_latency_s, g + a.eager_gap_s) + c.t
    extra = 0.0 if module_driven else a.plan_host_s
    return max(h, g) + extra, host_iter


def estimate(trace: GT.Trace, model: CostModel, top: int = 10) -> PlanEstimate:
    dev, a = model.dev, model.a
    costs = [model.event(e) for e in trace.events]
    mult = [n for _, n in trace.plan_multiplicity()]
    it = [i for i, e in enumerate(trace.events) if e.phase == "iter1"]
    gpu_iter = sum(costs[i].t for i in it if trace.events[i].is_kernel)
    by_bound: Dict[str, float] = collections.defaultdict(float)
    for i in it:
        by_bound[costs[i].bound] += costs[i].t * 1e3
    graph_ms = None
    if trace.captured:
        node = dev.graph_node_s * a.graph_node_scale
        total = sum(n * (c.t + node) for e, c, n in zip(trace.events, costs, mult) if e.is_kernel)
        graph_ms = (total + dev.graph_launch_s + a.plan_host_s) * 1e3
    eager_s, host_iter = simulate_eager(trace, costs, dev, a)
    eager_ms = eager_s * 1e3
    plan_ms = graph_ms if graph_ms is not None else eager_ms
    if graph_ms is None and host_iter > gpu_iter:
        bound = "host (eager issue)"
    else:
        gaps = ({"graph nodes": sum(trace.events[i].is_kernel for i in it) * dev.graph_node_s * a.graph_node_scale
                 * 1e3} if graph_ms is not None else {})
        bound = max({**by_bound, **gaps}.items(), key=lambda kv: kv[1])[0]
    # per-kernel table of the steady iteration: launches grouped by name, grid and bound
    groups: Dict[Tuple, Dict[str, Any]] = {}
    for i in it:
        e, c = trace.events[i], costs[i]
        if not e.is_kernel:
            continue
        shape = _shape_of(e)
        key = (e.kind, e.name, shape, c.programs, c.bound, e.part)
        row = groups.setdefault(key, dict(kind=e.kind, name=e.name + (" [encode]" if e.part else ""), shape=shape,
                                          launches=0,
                                          programs=c.programs, sm_fill=c.sm_fill, ctas_per_sm=c.ctas_per_sm,
                                          us_total=0.0, flops=0.0, bytes=0.0, bound=c.bound, note=c.note))
        row["launches"] += 1
        row["us_total"] += c.t * 1e6
        row["flops"] += c.flops
        row["bytes"] += c.bytes
    kernels = sorted(groups.values(), key=lambda r: -r["us_total"])
    for r in kernels:
        r["us_each"] = r["us_total"] / r["launches"]
    notes = list(trace.notes)
    if graph_ms is None and not trace.captured and trace.impl.startswith("lewm_fast") and "reference" not in trace.impl:
        notes.append("eager plan (not captured)")
    return PlanEstimate(trace.label, trace.impl, dev.key, trace.n_envs, trace.history, trace.dtype, trace.captured,
                        trace.launches_per_iteration, trace.launches_per_plan, gpu_iter * 1e3, host_iter * 1e3,
                        graph_ms, eager_ms, plan_ms, bound, dict(by_bound), kernels[:top] if top else kernels, notes)


def _shape_of(e: GT.Event) -> str:
    """The first two tensor operands' shapes, e.g. ``900x1024 192x1024``."""
    if e.kind == "triton":
        shapes = [tuple(t.shape) for t in _tensors(e.launch.args)[:2]]
    else:
        mats = [t.shape for t in e.op.inputs if len(t.shape) >= 2] if e.name in ("mm", "addmm", "bmm") else []
        shapes = mats[:2] or [t.shape for t in e.op.inputs[:2]]
    return " ".join("x".join(map(str, s)) for s in shapes)


def without_encoder(trace: GT.Trace) -> GT.Trace:
    """stable-worldmodel's loop with the context / goal embeddings cached (the paper estimate's assumption)."""
    t = dataclasses.replace(trace, events=[e for e in trace.events if e.part != "encode"], notes=[])
    t.label = trace.label.replace("swm eager", "swm eager, encoder cached")
    t.impl = "swm eager"
    return t


# ---------------------------------------------------------------------------------------------------- the run
MODES = {"float32": (torch.float32, "ieee"), "tf32": (torch.float32, "tf32"), "tf32x3": (torch.float32, "tf32x3"),
         "bfloat16": (torch.bfloat16, "ieee")}
"""Rollout numerics: (dtype, precision of float32 dots) of ``RolloutEngine``."""


def trace_all(envs: Sequence[int], modes: Sequence[str], histories: Sequence[int],
              config: Optional[Dict[str, Any]] = None, reference: bool = True,
              dev: GD.Device = GD.DEVICES["h100"]) -> List[GT.Trace]:
    """lewm_fast's plans (each envs x history x mode of ``MODES``, tiled for ``dev``: its SM count and shared memory
    per program), the stable-worldmodel adapter's at history 3 (float32 / bfloat16), stable-worldmodel's eager loop
    (float32; with and without per-iteration encoding) and the eager reference."""
    tiled = dict(config=config, sm_count=dev.sms, shared_memory=dev.smem_per_block)
    traces: List[GT.Trace] = []
    for n in envs:
        for h in histories:
            traces += [GT.trace_plan(n, h, *MODES[m][:1], precision=MODES[m][1], **tiled) for m in modes]
        traces += [GT.trace_plan(n, 3, MODES[m][0], history_pairing="swm", **tiled) for m in modes
                   if MODES[m][1] == "ieee"]
        if reference:
            traces += [GT.trace_reference(n, h, config=config) for h in histories]
    for h in histories:  # one env per solve: stable-worldmodel's CEM breaks at batch_size > 1 (see gpu_trace.trace_swm)
        swm = GT.trace_swm(1, h, config=config)
        traces += [swm, without_encoder(swm)]
    return traces


def ratios(plans: Sequence[PlanEstimate]) -> List[Dict[str, Any]]:
    """stable-worldmodel's eager plan time over lewm_fast's (its default mode), per (envs, history). stable-worldmodel
    solves one env at a time (``batch_size=1``, its default and the only one its ``criterion`` accepts), so n envs
    cost n one-env plans."""
    out = []
    swm = {(p.history, "cached" in p.label): p for p in plans if p.impl == "swm eager" and p.n_envs == 1}
    for p in plans:
        if not p.impl.startswith("lewm_fast") or "reference" in p.impl:
            continue
        for cached in (False, True):
            s = swm.get((p.history, cached))
            if s is None:
                continue
            label = s.label if p.n_envs == 1 else f"{p.n_envs} x {s.label}"
            out.append(dict(lewm_fast=p.label, swm=label, lewm_fast_ms=p.plan_ms, swm_ms=s.plan_ms * p.n_envs,
                            ratio=s.plan_ms * p.n_envs / p.plan_ms))
    return out


def aot_match(traces: Sequence[GT.Trace], report: AotReport, arch: int) -> Dict[str, Dict[str, Any]]:
    """Per trace: its Triton launches, how many the AOT report has (for ``arch``) and the descriptions of the rest."""
    out = {}
    for t in traces:
        launches = [e.launch for e in t.events if e.kind == "triton"]
        found = [report.lookup(x, arch) for x in launches]
        out[t.label] = {"triton_launches": len(launches), "matched": sum(row is not None for row, _ in found),
                        "missing": sorted({desc for row, desc in found if row is None})}
    return out


def git_state(traced_commit: Optional[str] = None) -> Dict[str, Any]:
    """The code traced: this checkout's HEAD and whether its working tree had changes, or ``traced_commit`` when
    lewm_fast was imported from an exported tree (``git archive``) instead."""
    import lewm_fast

    source = Path(lewm_fast.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    if traced_commit or source != REPO:
        return {"commit": traced_commit, "working_tree_modified": False, "lewm_fast_from": str(source),
                "checkout_head": git("rev-parse", "HEAD") or None}
    return {"commit": git("rev-parse", "HEAD") or None, "working_tree_modified": bool(git("status", "--porcelain")),
            "lewm_fast_from": str(source)}


def run(devices: Sequence[str], envs: Sequence[int], modes: Sequence[str], histories: Sequence[int],
        sensitivity: bool = False, top: int = 10, config: Optional[Dict[str, Any]] = None,
        report_path: Optional[Path] = None, reference: bool = True, traced_commit: Optional[str] = None) -> Dict[str, Any]:
    """Trace, estimate and collect everything the printout and the JSON hold."""
    report = AotReport(report_path or default_report_path())
    sets = GD.SENSITIVITY if sensitivity else {"nominal": GD.NOMINAL}
    results: Dict[str, Any] = {}
    traced: Dict[Tuple[int, int], List[GT.Trace]] = {}  # per (SM count, shared memory): the kernels' tiles follow them
    for key in devices:
        dev = GD.DEVICES[key]
        tiling = (dev.sms, dev.smem_per_block)
        if tiling not in traced:
            traced[tiling] = trace_all(envs, modes, histories, config, reference, dev)
        traces = traced[tiling]
        per_set = {name: [estimate(t, CostModel(dev, a, report), top if name == "nominal" else 0) for t in traces]
                   for name, a in sets.items()}
        plans = per_set["nominal"]
        entry: Dict[str, Any] = {"device": dataclasses.asdict(dev), "plans": [dataclasses.asdict(p) for p in plans],
                                 "ratios": ratios(plans), "aot_match": aot_match(traces, report, dev.aot_arch)}
        if sensitivity:  # ranges over the three assumption sets
            for i, p in enumerate(entry["plans"]):
                values = [per_set[name][i].plan_ms for name in sets]
                p["plan_ms_range"] = [min(values), max(values)]
            for r, rf, rs in zip(entry["ratios"], ratios(per_set["fast"]), ratios(per_set["slow"])):
                values = [r["ratio"], rf["ratio"], rs["ratio"]]
                r["ratio_range"] = [min(values), max(values)]
        results[key] = entry
    return {
        "estimate": ESTIMATE,
        "model_version": GD.MODEL_VERSION,
        "git": git_state(traced_commit),
        "torch": torch.__version__,
        "aot_report": {"path": str(report.path.relative_to(REPO)) if report.path.is_relative_to(REPO) else str(report.path),
                       "triton": report.triton, "arches": list(report.arches)},
        "aot_missing": sorted(report.missing),
        "assumptions": {name: dataclasses.asdict(a) for name, a in sets.items()},
        "plan": dict(GT.PLAN, traced_iterations=GT.TRACED_STEPS),
        # the launch table is the first device's (each device's plans carry their own launch counts)
        "traces": {t.label: {**t.counts(), "captured": t.captured, "notes": t.notes}
                   for t in next(iter(traced.values()))},
        "traces_tiled_for": devices[0],
        "devices": results,
    }


# ---------------------------------------------------------------------------------------------------- printout
def _fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x / 1e3:.2f} s" if x >= 1e3 else f"{x:.1f} ms"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.1f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def print_report(res: Dict[str, Any], top: int = 10, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    git = res["git"]
    p(f"{res['estimate']}")
    p(f"model: {res['model_version']}; traced: git {git['commit']}"
      f"{' + working-tree changes' if git['working_tree_modified'] else ''} ({git['lewm_fast_from']}); torch {res['torch']}; AOT report "
      f"{res['aot_report']['path']} (triton {res['aot_report']['triton']}, sm_{res['aot_report']['arches']})")
    plan = res["plan"]
    p(f"plan: CEM {plan['num_samples']} samples, top {plan['topk']}, {plan['n_steps']} iterations, horizon "
      f"{plan['horizon']}; latent inputs (the once-per-plan encoding of obs + goal is excluded on both sides)")
    p(f"\n== Launches per CEM iteration (structural: traced from the code, tiled for {res['traces_tiled_for']}) ==")
    p(f"{'plan':58} {'launches':>8} {'triton':>6} {'aten':>5} {'syncs':>5} {'encode':>6} {'per plan':>9}")
    for label, c in res["traces"].items():
        p(f"{label:58} {c['launches_per_iteration']:8d} {sum(c['triton_per_iteration'].values()):6d} "
          f"{sum(c['aten_per_iteration'].values()):5d} {c['syncs_per_iteration']:5d} "
          f"{c['encode_launches_per_iteration']:6d} {c['launches_per_plan']:9d}")
    shown = set()
    for label, c in res["traces"].items():
        kind = label.split(" envs=")[0] + " " + label.rsplit(" ", 1)[-1]
        if kind in shown or "cached" in label:
            continue
        shown.add(kind)
        p(f"  {label}: Triton {c['triton_per_iteration'] or '-'}")
        p(f"  {' ' * len(label)}  aten {dict(sorted(c['aten_per_iteration'].items(), key=lambda kv: -kv[1]))}")
    for note in sorted({n for c in res["traces"].values() for n in c["notes"]}):
        p(f"  note: {note}")
    if res["aot_missing"]:
        p(f"\nNot in the AOT report ({len(res['aot_missing'])} specializations; defaults used: "
          f"{res['assumptions']['nominal']['default_regs']} registers, "
          f"{res['assumptions']['nominal']['default_smem'] // 1024} KiB shared memory, FMA units for fp32 IEEE dots, "
          f"mma.sync otherwise):")
        for m in res["aot_missing"]:
            p(f"  {m}")
    for key, entry in res["devices"].items():
        dev = entry["device"]
        p(f"\n== {dev['name']} ({key}): plan totals (nominal{'; range: fast - slow assumptions' if 'plan_ms_range' in entry['plans'][0] else ''}); "
          f"per steady iteration: GPU ms, eager host ms ==")
        p(f"{'plan':58} {'graph':>9} {'eager':>9} {'plan':>9} {'range':>21} {'GPU/it':>7} {'host/it':>7}  bound")
        for pl in entry["plans"]:
            rng = pl.get("plan_ms_range")
            rng_s = f"[{_fmt_ms(rng[0])} - {_fmt_ms(rng[1])}]" if rng else ""
            p(f"{pl['label']:58} {_fmt_ms(pl['graph_ms']):>9} {_fmt_ms(pl['eager_ms']):>9} {_fmt_ms(pl['plan_ms']):>9} "
              f"{rng_s:>21} {pl['gpu_ms_per_iteration']:7.2f} {pl['host_ms_per_iteration']:7.2f}  {pl['bound']}")
        p(f"\n-- {key}: stable-worldmodel eager / lewm_fast (default mode: graph when captured) --")
        for r in entry["ratios"]:
            rng = f" [{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}]" if "ratio_range" in r else ""
            p(f"  {r['swm']:50} / {r['lewm_fast']:42} = {_fmt_ms(r['swm_ms'])} / {_fmt_ms(r['lewm_fast_ms'])} "
              f"= {r['ratio']:.2f}x{rng}")
        if top:
            for pl in entry["plans"]:
                if "cached" in pl["label"]:
                    continue
                p(f"\n-- {key}: {pl['label']}: top kernels of one steady iteration "
                  f"(GPU {pl['gpu_ms_per_iteration']:.3f} ms; by bound, ms: "
                  f"{ {k: round(v, 3) for k, v in sorted(pl['gpu_ms_by_bound'].items(), key=lambda kv: -kv[1])} }) --")
                p(f"   {'kernel':30} {'operands':24} {'n':>4} {'programs':>8} {'fill':>5} {'us each':>8} "
                  f"{'us total':>9} {'FLOPs':>9} {'bytes':>9}  bound / note")
                for k in pl["kernels"]:
                    fill = f"{k['sm_fill']:.2f}" if k["sm_fill"] is not None else "-"
                    prog = str(k["programs"]) if k["programs"] is not None else "-"
                    p(f"   {k['name'][:30]:30} {k['shape'][:24]:24} {k['launches']:4d} {prog:>8} {fill:>5} "
                      f"{k['us_each']:8.1f} {k['us_total']:9.1f} {_si(k['flops'], 'F'):>9} {_si(k['bytes'], 'B'):>9}  "
                      f"{k['bound']}"
                      f"{' / ' + k['note'] if k['note'] else ''}")


# ---------------------------------------------------------------------------------------------------- CLI
def auto_device() -> str:
    try:
        from lewm_fast.backends import gpu_name_nvml

        name = gpu_name_nvml()
    except Exception:  # noqa: BLE001 - no NVML, no driver
        name = None
    if not name and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    key = GD.device_for_name(name or "")
    if key is None:
        print(f"gpu_model: GPU {name!r} is not in the device table; estimating for h100", file=sys.stderr)
        return "h100"
    return key


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", nargs="+", default=["h100"], choices=[*GD.DEVICES, "auto"])
    parser.add_argument("--envs", nargs="+", type=int, default=[1, 50])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(MODES),
                        help="rollout numerics: float32 (exact dots), tf32 / tf32x3 (float32 on tensor cores), bfloat16")
    parser.add_argument("--history", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--sensitivity", action="store_true", help="also the fast / slow assumption sets (ranges)")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per plan (0: none)")
    parser.add_argument("--no-reference", action="store_true", help="skip lewm_fast's eager reference planner")
    parser.add_argument("--config", choices=["paper", "tiny"], default="paper",
                        help="model sizes: the paper's (default_config()) or the test suite's tiny ones (fast)")
    parser.add_argument("--aot-report", type=Path, default=None, help="default: bench/results/triton-aot-<triton>.json")
    parser.add_argument("--json", type=Path, default=None, help="write everything to this file")
    parser.add_argument("--json-top", type=int, default=25, help="kernel rows per plan in the JSON (0: all)")
    parser.add_argument("--traced-commit", default=None,
                        help="the commit of an exported tree lewm_fast is imported from (PYTHONPATH), for the record")
    args = parser.parse_args(argv)
    devices = list(dict.fromkeys(auto_device() if d == "auto" else d for d in args.device))
    config = GT.tiny_config_overrides() if args.config == "tiny" else None
    kept = args.top if not args.json else 0 if args.json_top == 0 else max(args.top, args.json_top)
    res = run(devices, args.envs, args.dtype, args.history, args.sensitivity, top=kept, config=config,
              report_path=args.aot_report, reference=not args.no_reference, traced_commit=args.traced_commit)
    res["config"] = args.config
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
        for entry in res["devices"].values():  # the printout keeps the top kernels only
            for pl in entry["plans"]:
                pl["kernels"] = pl["kernels"][: args.top]
    print_report(res, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
