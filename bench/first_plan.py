"""What the first plan costs: Triton compilation (and autotuning, CUDA graph capture) on a cold kernel cache, with and
without ``lewm_fast.warmup`` first.

    TRITON_CACHE_DIR=$(mktemp -d) python bench/first_plan.py [--envs 1] [--bf16] [--warmup] [--history 3]

Run each variant in a fresh process with an empty TRITON_CACHE_DIR (Triton also caches compiled kernels on disk):
``bench/device_run.sh`` does. Prints the device, versions and the times of the warm-up, the first and the second
plan (30 iterations, 300 samples, horizon 5, the default LeWM with random weights).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import lewm_fast
from lewm_fast import CEMPlanner, build_lewm
from lewm_fast.backends import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=1, help="environments planned in one batched call")
    parser.add_argument("--history", type=int, default=3, help="context frames")
    parser.add_argument("--bf16", action="store_true", help="bf16 rollout (Triton backend only)")
    parser.add_argument("--warmup", action="store_true", help="call lewm_fast.warmup(planner) before the first plan")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = build_lewm(action_dim=2).to(device).eval()
    planner = CEMPlanner(model, n_steps=30 if cuda else 3, seed=0, dtype=torch.bfloat16 if args.bf16 else None)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(args.envs, args.history, model.latent_dim, device=device, generator=g)
    goal = torch.randn(args.envs, model.latent_dim, device=device, generator=g)

    def timed_plan() -> float:
        start = time.perf_counter()
        planner.plan(ctx, goal, latent=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    info = describe()
    print(f"device: {info['cuda_device'] or 'cpu'}  torch {info['torch']}  triton {info.get('triton')}  "
          f"TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR', '(default)')}")
    what = f"{args.envs} env(s), history {args.history}, {'bf16' if args.bf16 else 'fp32'}, backend {planner.which}"
    if args.warmup:
        report = lewm_fast.warmup(planner, n_envs=args.envs, history=args.history)
        print(f"warmup: {report}")
    first = timed_plan()
    second = timed_plan()
    print(f"first plan: {first:.2f} s   second plan: {1e3 * second:.1f} ms   ({what}, "
          f"{'after warmup' if args.warmup else 'no warmup'})")


if __name__ == "__main__":
    main()
