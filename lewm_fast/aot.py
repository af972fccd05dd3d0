"""Ahead-of-time compile checks of lewm_fast's Triton kernels for NVIDIA GPUs, on a machine without one.

The Triton interpreter (``TRITON_INTERPRET=1``, how CI checks the kernels' numerics) accepts code that the GPU compiler
rejects, and says nothing about registers or shared memory. This module compiles, down to cubin with the ``ptxas`` that
ships in the triton wheel, every kernel specialization that the code launches:

* the launches are recorded from the real code paths on meta tensors (``lewm_fast.precompile.record_*``): the planners'
  loops (every ``lewm-eval`` planner kind: CEM, MPPI, iCEM, predictive sampling, categorical CEM, and the gradient
  planners GD, Lagrangian and PGD with the rollout's backward; 1 and 50 environments, history 1 and 3, float32 and
  bfloat16 rollouts, action blocks of 10 and 25) and ``predict`` on the paper-size model, SIGReg forward/backward at
  the training shapes (float32, bfloat16 and float16 inputs), the ``elite_refit`` op, and the same paths on the test
  suite's tiny model and shapes;
* each launch is expanded over its autotune configs, specialized exactly as Triton's JIT would specialize it
  (argument types, 16-byte alignment / divisibility, integers equal to 1) and deduplicated;
* each specialization is compiled for every target (sm_80: A100; sm_90: H100/H200) in parallel processes, with a fresh
  Triton cache so that compile times are cold.

The report lists, per specialization and target, registers per thread, spill stores/loads, stack frame, shared memory
and compile seconds. A compile error, any spill, or shared memory beyond the target's limit is a failure.

    python -m lewm_fast.aot [--arch 80 90] [--workers N] [--out report.json] [--only paper|tests]

(also ``lewm-fast aot``). Exit status 1 when any specialization fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

# Shared memory one block may use (opt-in maximum), bytes: CUDA programming guide, compute capability tables.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
SM_COUNT = {80: 108, 86: 84, 89: 128, 90: 132}  # A100, RTX 3090-class, L40/4090-class, H100/H200
DEFAULT_ARCHES = (80, 90)

Labelled = Tuple[str, Any]  # (where the launch comes from, Launch)


# ---------------------------------------------------------------------------------------------------- what to compile
def _paper_model(action_dim: int) -> torch.nn.Module:
    from . import build_lewm

    with torch.device("meta"):
        return build_lewm(action_dim=action_dim).eval()


def _tiny_model(**overrides: Any) -> torch.nn.Module:
    """The test suite's tiny LeWM (``io.TINY_CONFIG``, with ``overrides``): depth 2, 4 heads of 8, latent 32."""
    from .io import TINY_CONFIG, build_model, default_config

    with torch.device("meta"):
        return build_model(default_config(**{**TINY_CONFIG, **overrides})).eval()


def paper_launches(sm_count: int) -> List[Labelled]:
    """Launches at the paper's shapes: every planner kind (300 samples, top 30, horizon 5) over 1 and 50 envs (also as the
    stable-worldmodel adapter plans at history 3; CEM and GD also with TF32 / 3xTF32 float32 dots), SIGReg at the training shape T=4 x B=128 x D=192, M=1024 (and
    B=8192, M=512), the refit op, ``predict``, a gradient planner's step (costs under autograd and their backward;
    also paired as the adapter plans at history 3)."""
    from .precompile import PLANNERS, SWM_PAIRED, record_gradient_launches, record_plan_launches, \
        record_predict_launches, record_refit_launches, record_sigreg_launches

    out: List[Labelled] = []
    for action_dim in (2, 5):  # Two-Room / PushT / Reacher; Cube
        model = _paper_model(action_dim)
        for planner in PLANNERS:
            for n_envs in (1, 50):
                for history in (1, 3):
                    for dtype in (torch.float32, torch.bfloat16):
                        label = f"paper {planner} a={action_dim} envs={n_envs} history={history} {_dt(dtype)}"
                        out += [(label, x) for x in record_plan_launches(model, n_envs, history, planner, dtype=dtype,
                                                                         sm_count=sm_count)]
                if planner in ("cem", "gd"):  # the rollout's float32 tensor-core variants, forward and backward
                    for history in (1, 3):
                        for precision in ("tf32", "tf32x3"):
                            label = f"paper {planner} a={action_dim} envs={n_envs} history={history} fp32 {precision}"
                            out += [(label, x) for x in record_plan_launches(model, n_envs, history, planner,
                                                                             sm_count=sm_count, precision=precision)]
                if planner in SWM_PAIRED:
                    label = f"paper {planner} a={action_dim} envs={n_envs} history=3 fp32 swm-paired"
                    out += [(label, x) for x in record_plan_launches(model, n_envs, 3, planner, sm_count=sm_count,
                                                                     history_pairing="swm")]
        for dtype in (torch.float32, torch.bfloat16):
            out += [(f"paper predict a={action_dim} {_dt(dtype)}", x)
                    for x in record_predict_launches(model, 128, dtype=dtype, sm_count=sm_count)]
        for n_envs in (1, 50):  # a gradient planner's step: the costs' forward under autograd and their backward
            for history in (1, 3):
                for dtype in (torch.float32, torch.bfloat16):
                    out += [(f"paper gradient a={action_dim} envs={n_envs} history={history} {_dt(dtype)}", x)
                            for x in record_gradient_launches(model, n_envs, history, dtype=dtype, sm_count=sm_count)]
            out += [(f"paper gradient a={action_dim} envs={n_envs} history=3 fp32 swm-paired", x)
                    for x in record_gradient_launches(model, n_envs, 3, sm_count=sm_count, paired=True)]
    for shape in ((4, 128, 192, 1024), (1, 8192, 192, 512)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out += [(f"paper sigreg {shape} {_dt(dtype)}", x)
                    for x in record_sigreg_launches(shape, dtype=dtype, sm_count=sm_count)]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out += [(f"paper elite_refit op {_dt(dtype)}", x)
                for x in record_refit_launches((50, 300, 5, 10), 30, dtype=dtype, sm_count=sm_count)]
    return out


def test_shape_launches(sm_count: int) -> List[Labelled]:
    """Launches of the test suite's tiny model and shapes (each constexpr branch they reach: short windows, prefixes,
    small heads, odd sizes, custom knot counts)."""
    from .precompile import PLANNERS, SWM_PAIRED, record_gradient_launches, record_plan_launches, \
        record_predict_launches, record_refit_launches, record_sigreg_launches

    out: List[Labelled] = []
    model = _tiny_model()
    for planner in PLANNERS:
        for history in (1, 2, 3):
            for dtype in (torch.float32, torch.bfloat16):
                out += [(f"tests {planner} tiny history={history} {_dt(dtype)}", x)
                        for x in record_plan_launches(model, 2, history, planner, num_samples=16, topk=4,
                                                      horizon=3, dtype=dtype, sm_count=sm_count)]
            if planner == "cem":
                out += [(f"tests cem tiny history={history} fp32 tf32", x)
                        for x in record_plan_launches(model, 2, history, planner, num_samples=16, topk=4, horizon=3,
                                                      sm_count=sm_count, precision="tf32")]
            if history > 1 and planner in SWM_PAIRED:
                out += [(f"tests {planner} tiny history={history} fp32 swm-paired", x)
                        for x in record_plan_launches(model, 2, history, planner, num_samples=16, topk=4, horizon=3,
                                                      sm_count=sm_count, history_pairing="swm")]
    for history in (1, 2, 3):
        for dtype in (torch.float32, torch.bfloat16):
            out += [(f"tests gradient tiny history={history} {_dt(dtype)}", x)
                    for x in record_gradient_launches(model, 2, history, num_samples=5, horizon=4, dtype=dtype,
                                                      sm_count=sm_count)]
        out += [(f"tests gradient tiny history={history} fp32 swm-paired", x)
                for x in record_gradient_launches(model, 2, history, num_samples=3, horizon=3, sm_count=sm_count,
                                                  paired=True)]
    for frames in (1, 2, 3):
        out += [(f"tests predict tiny frames={frames}", x)
                for x in record_predict_launches(model, 4, frames, sm_count=sm_count)]
    # one head as wide as the model: to_out is an Identity, so attention runs as its own kernel
    single_head = _tiny_model(heads=1, dim_head=32)  # TINY_CONFIG's latent_dim
    out += [("tests cem tiny single-head history=3", x)
            for x in record_plan_launches(single_head, 2, 3, "cem", num_samples=16, topk=4, horizon=3,
                                          sm_count=sm_count)]
    for shape in ((2, 33, 40, 70), (1, 17, 24, 20), (2, 5, 7, 3), (2, 21, 8, 12)):
        for knots in ((17, 5, 4, 1) if shape == (2, 21, 8, 12) else (17,)):
            out += [(f"tests sigreg {shape} K={knots}", x)
                    for x in record_sigreg_launches(shape, knots, sm_count=sm_count)]
    for shape, topk in (((3, 40, 4, 2), 5), ((2, 7, 3, 1), 7), ((1, 300, 5, 10), 30)):
        for dtype in (torch.float32, torch.bfloat16):
            out += [(f"tests elite_refit {shape} k={topk} {_dt(dtype)}", x)
                    for x in record_refit_launches(shape, topk, dtype=dtype, sm_count=sm_count)]
    return out


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------------- specialization
@dataclass
class Specialization:
    """One kernel as Triton's JIT would compile it for ``arch``: signature, constexprs, attributes, options."""

    module: str
    kernel: str
    arch: int
    signature: Dict[str, str]
    constexprs: Dict[Tuple[int, ...], Any]
    attrs: Dict[Tuple[int, ...], Any]
    options: Dict[str, Any]
    origins: List[str] = field(default_factory=list)

    def key(self) -> str:
        return repr((self.module, self.kernel, self.arch, sorted(self.signature.items()), sorted(self.constexprs.items()),
                     sorted(self.attrs.items()), sorted((k, repr(v)) for k, v in self.options.items())))

    def describe(self) -> Dict[str, Any]:
        """The constexprs by parameter name and the launch options that set the compiled code's shape."""
        fn = _jit_function(self.module, self.kernel)
        names = [p.name for p in fn.params]
        return {
            "constexprs": {names[k[0]]: _plain(v) for k, v in sorted(self.constexprs.items())},
            "num_warps": self.options.get("num_warps"),
            "num_stages": self.options.get("num_stages"),
            "dtypes": sorted({v for v in self.signature.values() if v.startswith("*")}),
        }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def _jit_function(module: str, name: str):
    fn = getattr(importlib.import_module(module), name)
    return fn.fn if hasattr(fn, "configs") else fn  # the JIT function under an autotuner


def specializations(labelled: Iterable[Labelled], arch: int) -> List[Specialization]:
    """Expand launches over their autotune configs and specialize them for ``arch`` the way Triton's JIT does
    (``create_function_from_signature`` + ``_pack_args``); one entry per distinct compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binders: Dict[int, Callable] = {}
    found: Dict[str, Specialization] = {}
    for origin, launch in labelled:
        for fn, kwargs in launch.variants():
            binder = binders.get(id(fn))
            if binder is None:
                binder = binders[id(fn)] = create_function_from_signature(fn.signature, fn.params, backend)
            bound, spec, opts = binder(*launch.args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
            item = Specialization(fn.fn.__module__, fn.fn.__name__, arch, dict(signature), dict(constexprs),
                                  dict(attrs), dict(options.__dict__))
            item = found.setdefault(item.key(), item)
            if origin not in item.origins:
                item.origins.append(origin)
    return list(found.values())


# ---------------------------------------------------------------------------------------------------- compiling
_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas_log(log: str) -> Dict[str, Optional[int]]:
    """Registers, stack frame and spill bytes from ``ptxas -v`` output (None where the log does not say)."""
    out: Dict[str, Optional[int]] = {}
    for name, pattern in _PTXAS.items():
        values = [int(v) for v in pattern.findall(log)]
        out[name] = max(values) if values else None
    return out


def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default today; silences its 3.9 warning
    import triton

    triton.knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v output: the register / spill counts


def compile_specialization(item: Specialization) -> Dict[str, Any]:
    """Compile one specialization to cubin; -> the report row (``error`` set on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(item.module, item.kernel)
    row: Dict[str, Any] = {"kernel": item.kernel, "module": item.module, "arch": item.arch, **item.describe(),
                           "origins": item.origins}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, item.signature, item.constexprs, item.attrs),
                                      target=GPUTarget("cuda", item.arch, 32), options=item.options)
    except Exception as exc:  # the compiler's own error (CompilationError, PTXASError, MLIR failures)
        row.update(error=f"{type(exc).__name__}: {exc}"[:4000], compile_s=round(time.perf_counter() - start, 2))
        return row
    row["compile_s"] = round(time.perf_counter() - start, 2)
    row.update(parse_ptxas_log(log.getvalue()))
    row["shared_bytes"] = int(compiled.metadata.shared)
    ptx = compiled.asm["ptx"]
    row["ptx_lines"] = ptx.count("\n")
    # tensor-core instructions of the dots: Hopper's wgmma, the older mma.sync, or none (FMA units: fp32 IEEE dots)
    row["dot_instructions"] = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else None
    row["cubin_bytes"] = len(compiled.asm["cubin"])
    row["error"] = None
    return row


def problems(row: Dict[str, Any]) -> List[str]:
    """Why a report row fails the check (empty when it passes)."""
    if row.get("error"):
        lines = [line for line in row["error"].splitlines() if line.strip()]
        where, why = lines[0], lines[-1]
        return [where if why == where else f"{where} {why}"[:400]]
    found = []
    if row.get("registers") is None:
        found.append("no ptxas register report")
    if (row.get("spill_stores") or 0) or (row.get("spill_loads") or 0):
        found.append(f"register spills: {row['spill_stores']} bytes stored, {row['spill_loads']} bytes loaded")
    limit = SHARED_MEMORY_LIMIT.get(row["arch"])
    if limit is not None and row.get("shared_bytes", 0) > limit:
        found.append(f"shared memory {row['shared_bytes']} bytes > sm_{row['arch']}'s {limit}")
    return found


def compile_all(items: Sequence[Specialization], workers: int, progress: bool = True) -> List[Dict[str, Any]]:
    """Compile every specialization in ``workers`` spawned processes with a fresh (then removed) Triton cache."""
    cache_dir = tempfile.mkdtemp(prefix="lewm-fast-aot-")
    rows: List[Dict[str, Any]] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(cache_dir,)) as pool:
            futures = [pool.submit(compile_specialization, item) for item in items]
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(futures), desc="compiling", unit="kernel", file=sys.stderr)
            for future in as_completed(futures):
                rows.append(future.result())
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    rows.sort(key=lambda r: (r["module"], r["kernel"], r["arch"], json.dumps(r["constexprs"], sort_keys=True)))
    return rows


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per kernel and target: specializations, worst registers / spills / shared memory / compile time."""
    out: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(f"{row['kernel']} sm_{row['arch']}", {
            "specializations": 0, "failed": 0, "max_registers": 0, "max_spill_bytes": 0, "max_shared_bytes": 0,
            "max_compile_s": 0.0, "total_compile_s": 0.0, "dot_instructions": [],
        })
        entry["specializations"] += 1
        entry["failed"] += bool(problems(row))
        entry["max_registers"] = max(entry["max_registers"], row.get("registers") or 0)
        entry["max_spill_bytes"] = max(entry["max_spill_bytes"], (row.get("spill_stores") or 0) + (row.get("spill_loads") or 0))
        entry["max_shared_bytes"] = max(entry["max_shared_bytes"], row.get("shared_bytes") or 0)
        entry["max_compile_s"] = max(entry["max_compile_s"], row["compile_s"])
        entry["total_compile_s"] = round(entry["total_compile_s"] + row["compile_s"], 2)
        kind = row.get("dot_instructions")
        if kind and kind not in entry["dot_instructions"]:
            entry["dot_instructions"] = sorted(entry["dot_instructions"] + [kind])
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_check(arches: Sequence[int] = DEFAULT_ARCHES, workers: Optional[int] = None, only: Optional[str] = None,
              progress: bool = True) -> Dict[str, Any]:
    """Record, specialize and compile; -> the report (``failures`` lists every failing row)."""
    import triton

    start = time.perf_counter()
    items: List[Specialization] = []
    for arch in arches:
        labelled: List[Labelled] = []
        if only in (None, "paper"):
            labelled += paper_launches(SM_COUNT.get(arch, 132))
        if only in (None, "tests"):
            labelled += test_shape_launches(SM_COUNT.get(arch, 132))
        items += specializations(labelled, arch)
    recorded_s = time.perf_counter() - start
    rows = compile_all(items, workers or max(1, os.cpu_count() or 1), progress)
    failures = [{"kernel": r["kernel"], "arch": r["arch"], "constexprs": r["constexprs"], "problems": problems(r),
                 "origin": r["origins"][0]} for r in rows if problems(r)]
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "host_cpu": _cpu_model(),
        "workers": workers or os.cpu_count(),
        "arches": list(arches),
        "shared_memory_limit_bytes": {str(a): SHARED_MEMORY_LIMIT.get(a) for a in arches},
        "wall_s": round(time.perf_counter() - start, 1),
        "record_s": round(recorded_s, 1),
        "specializations": len(rows),
        "failures": failures,
        "summary": summarize(rows),
        "kernels": rows,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lewm-fast aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHES),
                        help="CUDA compute capabilities as integers (default: 80 90)")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--only", choices=("paper", "tests"), default=None, help="only the paper or the test shapes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for arch in args.arch:
        if arch < 70:
            parser.error(f"--arch {arch}: Triton targets compute capability 7.0 or newer")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.out and not os.access(os.path.dirname(os.path.abspath(args.out)), os.W_OK):
        parser.error(f"--out {args.out}: its folder does not exist or is not writable")
    try:
        import triton  # noqa: F401
    except ImportError:
        parser.error("needs triton (pip install triton)")
    os.environ.pop("TRITON_INTERPRET", None)  # kernels must be real JIT functions here, not interpreted ones
    already = [m for m in ("lewm_fast.kernels.sigreg", "lewm_fast.kernels.elite_refit") if m in sys.modules]
    if already:
        raise RuntimeError(f"{already} were imported before the check; run it in a fresh process")
    report = run_check(args.arch, args.workers, args.only, progress=not args.quiet)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    for name, entry in report["summary"].items():
        print(f"{name:45s} {entry['specializations']:4d} specs  regs<={entry['max_registers']:3d}  "
              f"spill {entry['max_spill_bytes']:6d} B  smem<={entry['max_shared_bytes']:6d} B  "
              f"compile<={entry['max_compile_s']:6.1f} s  (sum {entry['total_compile_s']:.1f} s)  "
              f"{'FAILED ' + str(entry['failed']) if entry['failed'] else 'ok'}")
    for failure in report["failures"]:
        print(f"FAIL {failure['kernel']} sm_{failure['arch']} {failure['constexprs']}: {'; '.join(failure['problems'])}"
              f"  [{failure['origin']}]")
    print(f"{report['specializations']} specializations for sm_{', sm_'.join(map(str, args.arch))} in "
          f"{report['wall_s']} s: {len(report['failures'])} failed")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
