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


def _demo(device: str, n_steps: int) -> None:
    """Build the paper-size LeWM with random weights, encode random frames, plan with the reference CEM."""
    import torch

    from lewm_fast import build_lewm
    from lewm_fast.reference import CEMSolver

    torch.manual_seed(0)
    model = build_lewm(action_dim=2).to(device).eval()
    obs = torch.randn(1, 3, 3, 224, 224, device=device)
    goal = torch.randn(1, 3, 224, 224, device=device)
    with torch.no_grad():
        t0 = time.perf_counter()
        emb = model.encode(obs)
        t1 = time.perf_counter()
    plan = CEMSolver(model, n_steps=n_steps, seed=0).plan(obs, goal)
    t2 = time.perf_counter()
    print(f"encoded {tuple(obs.shape)} -> {tuple(emb.shape)} in {1e3 * (t1 - t0):.1f} ms")
    print(f"CEM plan ({n_steps} iterations x 300 samples, horizon 5) -> {tuple(plan.shape)} in {t2 - t1:.2f} s")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lewm-fast", description="lewm_fast: fast, faithful LeWorldModel.")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print the backends available here (CUDA/Triton, C++ extension, interpreter)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    demo = sub.add_parser("demo", help="build a random paper-size LeWM, encode frames and plan once with CEM")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--n-steps", type=int, default=3, help="CEM iterations (default: 3)")
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
