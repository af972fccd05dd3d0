"""SIGReg under torch.distributed: two gloo ranks on CPU, each holding part of the batch (unequal, odd sizes), get the
value of the concatenated batch and, for their own rows, its gradient — for the functional API with a shared A and for
the module, which broadcasts the projection drawn on rank 0."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lewm_fast.backends import csrc_available
from lewm_fast.ops.sigreg import SIGReg, sigreg
from lewm_fast.reference.sigreg import random_projection, sigreg_knots, sigreg_reference

SIZES = (9, 14)  # batch rows held by rank 0 and rank 1
T, D, M = 3, 10, 37
BACKENDS = ("cpu", "reference") if csrc_available() else ("reference",)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, sum(SIZES), D, generator=g), random_projection(D, M, generator=g)


def _rows(rank: int) -> slice:
    return slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))


def _value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z)
    value.backward()
    return value.detach(), z.grad


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z, A = _data()
        local = z[:, _rows(rank)]
        results = {backend: _value_and_grad(lambda zz: sigreg(zz, A, backend=backend), local) for backend in BACKENDS}
        module = SIGReg(num_proj=M, backend=BACKENDS[0])
        generator = torch.Generator().manual_seed(100 + rank)  # different draws per rank: rank 0's must win
        results["module"] = _value_and_grad(lambda zz: module(zz, generator=generator), local)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_match_the_concatenated_batch(tmp_path):
    world = len(SIZES)
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    z, A = _data()
    t, phi, w = sigreg_knots()
    module_A = random_projection(D, M, generator=torch.Generator().manual_seed(100))
    expected = {backend: _value_and_grad(lambda zz: sigreg_reference(zz, A, t, phi, w), z) for backend in BACKENDS}
    expected["module"] = _value_and_grad(lambda zz: sigreg_reference(zz, module_A, t, phi, w), z)
    for name, (value, grad) in expected.items():
        scale = float(grad.abs().max())
        for rank in range(world):
            rank_value, rank_grad = results[rank][name]
            torch.testing.assert_close(rank_value, value, rtol=1e-5, atol=1e-6, msg=f"{name}, rank {rank}: value")
            torch.testing.assert_close(rank_grad, grad[:, _rows(rank)], rtol=1e-4, atol=1e-5 * scale,
                                       msg=f"{name}, rank {rank}: gradient")
