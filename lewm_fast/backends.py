"""Backend discovery and the single dispatch rule used by every fast op.

Backends: ``"triton"`` (CUDA tensors; also CPU tensors under ``TRITON_INTERPRET=1``, for tests),
``"cpu"`` (the C++ extension ``lewm_fast._C``, CPU tensors), ``"reference"`` (plain PyTorch, anywhere). On meta
tensors ``"triton"`` records its kernel launches instead of running them (ahead-of-time compile checks, warm-up).
``"auto"`` picks Triton on CUDA, C++ on CPU, reference otherwise. ``resolve_device`` maps the command lines'
``device`` setting (auto, cpu, cuda) to a torch device.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Dict

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")


@functools.lru_cache(maxsize=None)
def csrc_available() -> bool:
    """True when the compiled extension ``lewm_fast._C`` imports (its ops are then under ``torch.ops.lewm_fast``)."""
    try:
        importlib.import_module("lewm_fast._C")
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_interpreter() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors living on ``device``. On the meta device nothing runs: kernel
    launches are recorded (``lewm_fast.ops.launches.record_launches``) for compile checks and warm-up."""
    if not triton_importable():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "meta":
        return True
    return device.type == "cpu" and triton_interpreter()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map a requested backend to the one that will run on ``device``; raise if it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda" and triton_available(device):
            return "triton"
        if device.type == "cpu" and csrc_available():
            return "cpu"
        return "reference"
    if backend == "triton" and not triton_available(device):
        raise RuntimeError(
            f"backend='triton' cannot run on {device}: needs a CUDA device with triton installed "
            "(or TRITON_INTERPRET=1 for CPU tensors)"
        )
    if backend == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if not csrc_available():
            raise RuntimeError("backend='cpu' needs the C++ extension lewm_fast._C, which is not built; reinstall lewm_fast")
    return backend


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a device; CUDA is the current one (``cuda:LOCAL_RANK`` under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def gpu_name_nvml() -> str | None:
    """GPU 0's name via nvidia-ml-py (NVML), or None without an NVIDIA driver / the package."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return name.decode() if isinstance(name, bytes) else name


def describe() -> Dict[str, object]:
    """A summary of what this installation can run (used by ``lewm-fast info``)."""
    cuda = torch.cuda.is_available()
    info: Dict[str, object] = {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_nvml": gpu_name_nvml(),
        "triton": None,
        "triton_interpreter": triton_interpreter(),
        "csrc": csrc_available(),
        "openmp_threads": None,
        "auto_backend_cpu": resolve_backend("auto", "cpu"),
        "auto_backend_cuda": resolve_backend("auto", "cuda") if cuda else None,
    }
    if triton_importable():
        import triton

        info["triton"] = triton.__version__
    if info["csrc"]:
        info["openmp_threads"] = importlib.import_module("lewm_fast._C").openmp_max_threads()
    return info
