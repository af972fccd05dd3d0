"""How every kernel wrapper launches: one ``launch`` call per kernel launch, which runs the kernel, or, for tensors on
the ``meta`` device inside ``record_launches()``, records what would run (kernel, arguments, constexprs, options).

Recording lets the ahead-of-time compile checks (``lewm_fast.aot``) and the warm-up (``lewm_fast.precompile``) derive the
exact specializations from the wrappers' own selection logic (block sizes, dtypes, strides, constexpr branches):
they call the real code paths on meta tensors, with no device and no launch. Meta tensors plan launches as on a GPU
(the interpreter-only choices of the wrappers apply to CPU tensors only).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Tuple, TypeVar, Union

import torch


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](*args, **kwargs)``; kwargs hold the constexprs and launch options."""

    kernel: Any  # triton JITFunction or Autotuner
    grid: Union[Tuple[int, ...], Callable[[dict], Tuple[int, ...]]]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The kernel's function name (the JIT function under an autotuner)."""
        fn = getattr(self.kernel, "fn", self.kernel)
        return fn.__name__

    def variants(self) -> List[Tuple[Any, Dict[str, Any]]]:
        """(JIT function, complete kwargs) of each kernel this launch may compile: one, or one per autotune config."""
        configs = getattr(self.kernel, "configs", None)
        if configs is None:
            return [(self.kernel, dict(self.kwargs))]
        return [(self.kernel.fn, {**self.kwargs, **config.all_kwargs()}) for config in configs]


class LaunchRecorder(List[Launch]):
    """The launches recorded inside ``record_launches``; ``sm_count`` is the multiprocessor count assumed for meta
    tensors (it sets how many programs the split-reduction kernels aim for), ``shared_memory`` the shared memory a
    program may use (None: an A100 / H100 class GPU)."""

    def __init__(self, sm_count: int, shared_memory: Optional[int] = None):
        super().__init__()
        self.sm_count = sm_count
        self.shared_memory = shared_memory


_RECORDER: ContextVar[Optional[LaunchRecorder]] = ContextVar("lewm_fast_launch_recorder", default=None)

H100_SM_COUNT = 132  # H100 SXM and H200; A100 has 108


@contextmanager
def record_launches(sm_count: int = H100_SM_COUNT, shared_memory: Optional[int] = None) -> Iterator[LaunchRecorder]:
    """Within this block, kernel wrappers called with meta tensors append their launches to the yielded list, tiled
    for a GPU of ``sm_count`` SMs and ``shared_memory`` bytes per program (None: an A100 / H100 class GPU)."""
    recorder = LaunchRecorder(sm_count, shared_memory)
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def _on_meta(args: Tuple[Any, ...]) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)


def launch(kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """Run ``kernel[grid](*args, **kwargs)``; with meta tensors, record it (inside ``record_launches``) instead."""
    if _on_meta(args):
        recorder = _RECORDER.get()
        if recorder is None:
            raise RuntimeError("Triton kernels cannot run on meta tensors; record their launches with "
                               "lewm_fast.ops.launches.record_launches()")
        recorder.append(Launch(kernel, grid, args, dict(kwargs)))
        return
    kernel[grid](*args, **kwargs)


def call_signature(*values: Any) -> Tuple[Any, ...]:
    """A key of a wrapper call: each tensor by (shape, strides, dtype, device), anything else by value."""
    return tuple((v.shape, v.stride(), v.dtype, v.device) if isinstance(v, torch.Tensor) else v for v in values)


P = TypeVar("P")


class PlanCache:
    """What a kernel wrapper derives from its arguments' shapes, strides, dtypes and devices alone (validation, tile
    sizes, grid, integer arguments), kept per ``call_signature`` so that a wrapper called again with the same
    signature (every call of a plan after its first iteration) skips it and only launches. Bounded: past
    ``capacity`` signatures the oldest is dropped. A signature that cannot be hashed (a bad argument type) is not
    cached: ``build`` then runs, and raises, every time. Plans recorded on meta tensors are kept per recorder SM count
    and shared memory (``record_launches``), since tiles and grids follow them: recording for an A100 and then for
    an H100 must not reuse the A100's plans."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._plans: "OrderedDict[Hashable, Any]" = OrderedDict()

    def get(self, key: Tuple[Any, ...], build: Callable[[], P]) -> P:
        """The plan cached for ``key``, else ``build()`` (cached when it returns)."""
        recorder = _RECORDER.get()
        key = (key, None if recorder is None else (recorder.sm_count, recorder.shared_memory))
        try:
            plan = self._plans.get(key)
        except TypeError:  # unhashable: an argument of the wrong type, which build() reports
            return build()
        if plan is None:
            plan = build()
            self._plans[key] = plan
            if len(self._plans) > self.capacity:
                self._plans.popitem(last=False)
        return plan

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()


def multiprocessor_count(device: torch.device) -> Optional[int]:
    """SMs of a CUDA device; for meta tensors the recorder's ``sm_count``; None elsewhere (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta":
        recorder = _RECORDER.get()
        return recorder.sm_count if recorder is not None else H100_SM_COUNT
    return None


def fills_half_the_sms(programs: int, sm_count: Optional[int]) -> bool:
    """Whether a grid of ``programs`` gives at least half of ``sm_count`` SMs (an H100's when None) a program: the
    bar every latency tile choice must clear (a one-env plan's kernels should not run on fewer)."""
    return programs >= (sm_count or H100_SM_COUNT) // 2


@functools.lru_cache(maxsize=None)
def _cuda_shared_memory(index: int) -> int:
    from triton.runtime import driver

    return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])


def shared_memory_per_block(device: torch.device) -> Optional[int]:
    """Shared memory a program may use on a CUDA device (Triton's own launch limit: the opt-in maximum per block), in
    bytes; for meta tensors the recorder's ``shared_memory`` (None by default: sm_80 / sm_90, 163 / 227 KiB); None
    for the interpreter."""
    if device.type == "meta":
        recorder = _RECORDER.get()
        return None if recorder is None else recorder.shared_memory
    if device.type != "cuda":
        return None
    return _cuda_shared_memory(device.index if device.index is not None else torch.cuda.current_device())


def interpreted(device: torch.device) -> bool:
    """Whether tensors on ``device`` run through the Triton interpreter (CPU tensors under TRITON_INTERPRET=1)."""
    return device.type == "cpu"
