"""SIGReg forward + backward on the CPU at the LeWM training shape (T=4, B=128, D=192, M=1024, 17 knots): the fused op
(C++, ``lewm_fast.ops.sigreg.sigreg``) and the eager reference, in one process with ``--threads`` torch/OpenMP threads,
with the machine's load recorded. For comparing thread counts, OpenMP wait policies and loads, run it once per setting
(the wait policy is read when torch starts) and interleave the settings, e.g. on a busy 2-core machine:

    for r in 1 2 3 4 5; do
      python bench/sigreg_load.py --threads 1; python bench/sigreg_load.py --threads 2
      OMP_WAIT_POLICY=PASSIVE python bench/sigreg_load.py --threads 2
    done

Prints one JSON line: min and median milliseconds of each over ``--rounds`` timed rounds (after one warm-up), the
ratio of the medians, the 1-minute load average before and after, the threads, ``OMP_WAIT_POLICY``, the CPU model and
the torch version. ``docs/benchmarks.md`` ("SIGReg on a busy machine") reports such runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from lewm_fast.ops.sigreg import sigreg
from lewm_fast.reference.sigreg import random_projection, sigreg_knots, sigreg_reference


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def time_step(step, z: torch.Tensor, rounds: int) -> dict[str, float]:
    times = []
    for i in range(rounds + 1):
        z.grad = None
        start = time.perf_counter()
        step().backward()
        if i:  # round 0 warms up
            times.append(time.perf_counter() - start)
    times.sort()
    return {"min_ms": times[0] * 1e3, "median_ms": times[len(times) // 2] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 128, 192, generator=g).requires_grad_(True)
    A = random_projection(192, 1024, generator=g)
    t, phi, w = sigreg_knots()
    load_before = os.getloadavg()[0]
    fused = time_step(lambda: sigreg(z, A, t, phi, w), z, args.rounds)
    reference = time_step(lambda: sigreg_reference(z, A, t, phi, w), z, args.rounds)
    print(json.dumps({
        "fused": fused, "reference": reference, "speedup_median": reference["median_ms"] / fused["median_ms"],
        "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load1_before_after": [load_before, os.getloadavg()[0]], "cpu_model": cpu_model(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
