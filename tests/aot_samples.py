"""Kernels that must fail the ahead-of-time compile check, for tests/test_kernels_compile.py (run in a subprocess
without TRITON_INTERPRET: ``python -c "import aot_samples; aot_samples.main()"`` with this folder on PYTHONPATH).

* ``_global_read_kernel`` reads a plain Python global inside ``@triton.jit``: the interpreter accepts it, the compiler
  does not (the bug the CEM refit kernel had);
* ``_spilling_kernel`` keeps a 64x64 float32 IEEE dot product per warp in flight: ptxas spills registers;
* ``_fine_kernel`` compiles cleanly, so the check is seen to pass as well as fail.

Prints one JSON row per kernel: the report rows of ``lewm_fast.aot.compile_specialization`` with their problems.
"""

import json
import tempfile

import torch
import triton
import triton.language as tl

from lewm_fast import aot
from lewm_fast.kernels._launch import launch, record_launches

_LIMIT = 3  # a plain Python global: only tl.constexpr globals may be read inside jit code


@triton.jit
def _global_read_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(x_ptr + offs, tl.minimum(x, _LIMIT), mask=offs < n)


@triton.jit
def _spilling_kernel(a_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(a_ptr + offs[None, :] * BLOCK + offs[:, None])
    acc = tl.dot(a, b, input_precision="ieee")
    acc = tl.dot(acc, a, acc, input_precision="ieee")
    tl.store(out_ptr + offs[:, None] * BLOCK + offs[None, :], acc)


@triton.jit
def _fine_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(x_ptr + offs, x * 2.0, mask=offs < n)


def main() -> None:
    aot._worker_init(tempfile.mkdtemp(prefix="lewm-fast-aot-samples-"))  # a cold cache: ptxas runs and reports
    x = torch.empty(1024, device="meta")
    with record_launches() as launches:
        launch(_global_read_kernel, (1,), x, 1000, BLOCK=1024)
        launch(_spilling_kernel, (1,), x, x, BLOCK=64, num_warps=1)
        launch(_fine_kernel, (8,), x, 1000, BLOCK=128)
    for item in aot.specializations([("sample", spec) for spec in launches], 90):
        row = aot.compile_specialization(item)
        print(json.dumps({"kernel": row["kernel"], "problems": aot.problems(row)}))
