"""``lewm-fast``: report which backends this installation can run, and a small timing smoke test."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional


def _print_info(as_json: bool) -> None:
    from lewm_fast.backends import describe

    info = describe()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    print(f"torch            {info['torch']}")
    print(f"CUDA             {yes(info['cuda_available'])}" + (f" ({info['cuda_device']})" if info["cuda_device"] else ""))
    print(f"Triton           {info['triton'] or 'not installed'}" + (" [interpreter: TRITON_INTERPRET=1]" if info["triton_interpreter"] else ""))
    print(f"C++ ext (_C)     {yes(info['csrc'])}" + (f" ({info['openmp_threads']} OpenMP threads)" if info["csrc"] else ""))
    print(f"auto backend     cpu -> {info['auto_backend_cpu']}" + (f", cuda -> {info['auto_backend_cuda']}" if info["auto_backend_cuda"] else ""))


def _timed(fn, device: str):
    import torch

    fn()  # warm-up (kernel compilation, CUDA graph capture)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _step(message: str) -> None:
    """A progress line, shown at once (the demo's steps take seconds each on a CPU)."""
    print(f"... {message}", flush=True)


def _demo(device: str, n_steps: int) -> None:
    """Build the paper-size LeWM with random weights, encode random frames, plan with the reference and fast CEM."""
    import torch

    from lewm_fast import CEMPlanner, build_lewm, describe
    from lewm_fast.reference import CEMSolver

    info = describe()
    threads = f"{torch.get_num_threads()} torch threads"
    if info["csrc"]:
        threads += f", {info['openmp_threads']} OpenMP threads in the C++ extension"
    _step(f"building the paper-size LeWM (random weights) on {device}: {threads}")
    torch.manual_seed(0)
    model = build_lewm(action_dim=2).to(device).eval()
    obs = torch.randn(1, 3, 3, 224, 224, device=device)
    goal = torch.randn(1, 3, 224, 224, device=device)
    _step(f"encoding {tuple(obs.shape)} frames ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters): "
          "a warm-up pass, then the timed one")
    with torch.no_grad():
        emb, t_enc = _timed(lambda: model.encode(obs), device)
    print(f"encoded {tuple(obs.shape)} -> {tuple(emb.shape)} in {1e3 * t_enc:.1f} ms")
    ref = CEMSolver(model, n_steps=n_steps, seed=0)
    fast = CEMPlanner(model, n_steps=n_steps, seed=0)
    _step(f"planning with the reference CEMSolver ({n_steps} iterations x 300 samples): a warm-up plan, then the timed one")
    plan_ref, t_ref = _timed(lambda: ref.plan(obs, goal), device)
    _step(f"planning with lewm_fast.CEMPlanner [{fast.which}]: a warm-up plan"
          f"{' (Triton compilation, CUDA graph capture)' if fast.which == 'triton' else ''}, then the timed one")
    plan_fast, t_fast = _timed(lambda: fast.plan(obs, goal), device)
    what = f"{n_steps} iterations x 300 samples, horizon 5 -> {tuple(plan_fast.shape)}"
    print(f"reference CEMSolver: {t_ref:.3f} s   ({what})")
    print(f"lewm_fast.CEMPlanner [{fast.which}]: {t_fast:.3f} s   ({t_ref / t_fast:.1f}x)")
    if device == "cpu":
        print(f"max |plan difference| vs reference (same seed): {(plan_fast - plan_ref).abs().max().item():.2e}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lewm-fast", description="lewm_fast: fast, faithful LeWorldModel.")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print the backends available here (CUDA/Triton, C++ extension, interpreter)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    demo = sub.add_parser("demo", help="build a random paper-size LeWM, encode frames, plan with the reference and the fast CEM, print timings")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--n-steps", type=int, default=3, help="CEM iterations (default: 3)")
    sub.add_parser("aot", add_help=False, help="compile every launched Triton kernel specialization for sm_80/sm_90 "
                   "ahead of time (no GPU needed); report registers, spills, shared memory, compile time "
                   "(lewm-fast aot --help)")
    sub.add_parser("export-onnx", add_help=False, help="export a trained checkpoint to encoder.onnx + planner.onnx + "
                   "manifest.json (lewm-fast export-onnx --help)")
    sub.add_parser("web", add_help=False, help="serve the click-to-plan Two-Room page (onnxruntime-web) on localhost, "
                   "or write it to a folder (lewm-fast web --help)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["aot"]:  # its own parser (options, --help)
        from lewm_fast.aot import main as aot_main

        return aot_main(argv[1:])
    if argv[:1] in (["export-onnx"], ["web"]):  # key=value arguments
        from lewm_fast.cli.export import main as export_main

        return export_main(argv[0], argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        _print_info(args.json)
    elif args.command == "demo":
        _demo(args.device, args.n_steps)
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
