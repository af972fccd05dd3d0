"""Where a fast CEM plan spends its time: torch.profiler over ``CEMPlanner.plan`` on the default LeWM.

    python bench/profile_plan.py [--envs 1] [--n-steps 30] [--bf16] [--rows 25]

CUDA when available (kernel time per op, CUDA graphs off so kernels are attributed), else CPU (self CPU time; the
C++ window op's GEMMs show as ``aten::mm``/``aten::addmm``). Prints the device, versions, the mean wall time of the
profiled plans and the top ops.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lewm_fast import build_lewm
from lewm_fast.backends import describe
from lewm_fast.planning import CEMPlanner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=1, help="environments planned in one batched call")
    parser.add_argument("--n-steps", type=int, default=None, help="CEM iterations (default: 30 on CUDA, 3 on CPU)")
    parser.add_argument("--bf16", action="store_true", help="bf16 rollout (Triton backend only)")
    parser.add_argument("--plans", type=int, default=3, help="plans inside the profiled region")
    parser.add_argument("--rows", type=int, default=25, help="ops listed")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n_steps = args.n_steps or (30 if cuda else 3)
    torch.manual_seed(0)
    model = build_lewm(action_dim=2).to(device).eval()
    planner = CEMPlanner(
        model, num_samples=300, topk=30, n_steps=n_steps, horizon=5, receding_horizon=5, seed=0,
        dtype=torch.bfloat16 if args.bf16 else None, cuda_graph=False,
    )
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(args.envs, 3, model.latent_dim, device=device, generator=g)
    goal = torch.randn(args.envs, model.latent_dim, device=device, generator=g)

    def plans() -> float:
        start = time.perf_counter()
        for _ in range(args.plans):
            planner.plan(ctx, goal, latent=True)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.plans

    plans()  # warm-up: Triton compilation, weight packing
    unprofiled = plans()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        profiled = plans()
    info = describe()
    print(f"device: {info['cuda_device'] or 'cpu'}  torch {info['torch']}  triton {info.get('triton')}")
    print(f"plan: {args.envs} env(s), 300 samples, {n_steps} iterations, {'bf16' if args.bf16 else 'fp32'}: "
          f"{unprofiled * 1e3:.1f} ms per plan ({profiled * 1e3:.1f} ms under the profiler)")
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows))


if __name__ == "__main__":
    main()
