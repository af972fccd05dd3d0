"""pytest-benchmark harness: records the machine (GPU name via nvidia-ml-py, torch/triton versions, backends) in the
benchmark JSON and gives every suite the same device choice: full shapes on CUDA, small shapes on CPU."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Callable

import pytest
import torch

from lewm_fast.backends import describe


def pytest_benchmark_update_machine_info(config, machine_info):
    info = describe()
    info["date"] = datetime.date.today().isoformat()
    info["cpu_count"] = os.cpu_count()
    info["platform"] = platform.platform()
    machine_info["lewm_fast"] = info


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def is_cuda(device) -> bool:
    return device.type == "cuda"


@pytest.fixture
def synced(device) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Wrap a callable so that CUDA work is finished before the timer stops."""

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        if device.type != "cuda":
            return fn

        def run():
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    return wrap


@pytest.fixture
def run_bench(benchmark, synced, is_cuda):
    """``run_bench(fn, rounds_cpu=3, rounds_cuda=20, **extra_info)``: time fn with fixed rounds and record extra_info."""

    def go(fn: Callable[[], object], rounds_cpu: int = 3, rounds_cuda: int = 20, **extra_info):
        benchmark.extra_info.update(extra_info)
        benchmark.extra_info["device"] = "cuda" if is_cuda else "cpu"
        if is_cuda:
            torch.cuda.reset_peak_memory_stats()
        result = benchmark.pedantic(synced(fn), rounds=rounds_cuda if is_cuda else rounds_cpu, iterations=1, warmup_rounds=1)
        if is_cuda:
            benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        return result

    return go
