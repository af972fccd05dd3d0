"""Data-parallel training (``torchrun ... lewm-train``): the process group from torchrun's environment, the ranks'
view of it, and the layers whose batch statistics must span all ranks (BatchNorm, SIGReg).

Every rank holds ``batch_size / world_size`` rows of each global batch. DistributedDataParallel averages the ranks'
gradients, so a rank must compute the gradient of the *sum* over ranks of their losses with respect to its own rows
for the average to equal the single-process gradient of the global batch. The layers here do: ``SyncBatchNorm1d`` and
``gather_batch`` (differentiable all-reduce: the backward sums every rank's gradient), and ``SharedProjectionSIGReg``,
which lifts the fused SIGReg's own-rows gradient of the global loss to that sum.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import nn

USER_ERRORS = (ValueError, OSError)
"""What ``Ranks.agree`` shares between ranks: the user's mistakes (bad settings, missing or unreadable files)."""


class LaunchEnv(NamedTuple):
    """A process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_env() -> Optional[LaunchEnv]:
    """This process's place in a torchrun launch (its RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE environment
    variables), or None outside one."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        return None
    try:
        rank, world, local = (int(os.environ[n]) for n in names)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ValueError(f"torchrun's {', '.join(names)} must be integers, got "
                         + ", ".join(f"{n}={os.environ[n]!r}" for n in names)) from None
    return LaunchEnv(rank, world, local, local_world)


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Under torchrun with more than one process: initialise torch.distributed (NCCL with this rank on
    ``cuda:LOCAL_RANK`` for a CUDA ``device``, gloo on CPU) for the block and destroy it after; otherwise nothing."""
    env = torchrun_env()
    if env is None or env.world_size == 1:
        yield
        return
    if device.type == "cuda":
        if env.local_world_size > torch.cuda.device_count():
            raise ValueError(f"torchrun starts {env.local_world_size} processes on this machine but it has "
                             f"{torch.cuda.device_count()} GPU(s); pass --nproc_per_node={torch.cuda.device_count()} "
                             "(one process per GPU) or device=cpu")
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class AgreedError(ValueError):
    """A user error some rank hit, raised on every other rank by ``Ranks.agree`` (all ranks stop together)."""


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the number of training processes, with the few collectives the trainer needs; for a
    single process (no initialised process group) every collective is the identity."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reads and writes the run directory and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (not differentiable); -> it."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (anything ``torch.load(weights_only=True)`` reads back: tensors, numbers,
        strings, lists, tuples, dicts)."""
        if not self.active:
            return obj
        box = [_dumps(obj) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return _loads(box[0])

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (as for ``broadcast``), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, _dumps(obj))
        return [_loads(b) for b in out]

    def check_same(self, what: str, value: Any, hint: str = "") -> None:
        """ValueError on every rank unless all ranks pass an equal ``value`` (compared by a digest of its repr)."""
        digests = self.gather(hashlib.sha256(repr(value).encode()).hexdigest())
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(f"the training processes disagree on {what}: rank(s) {differ} differ from rank 0"
                             + (f"; {hint}" if hint else ""))

    @contextmanager
    def agree(self) -> Iterator[None]:
        """Run the block on every rank, then stop all of them if any hit a user error (``USER_ERRORS``): that rank
        re-raises its own, the others an ``AgreedError`` naming it. Lets per-rank work that may fail (opening files,
        checks) precede collectives without leaving the ranks that succeeded waiting for the one that failed."""
        error: Optional[BaseException] = None
        try:
            yield
        except USER_ERRORS as exc:
            if not self.active:
                raise
            error = exc
        messages = self.gather(None if error is None else str(error))
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise AgreedError(f"rank {rank}: {message}")


def _dumps(obj: Any) -> bytes:
    """torch.save to bytes (object collectives pickle tensors in a form some torch versions fail to load back)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def local_batch_size(batch_size: int, ranks: Ranks) -> int:
    """Rows of each global batch one rank trains on; ValueError unless ``batch_size`` splits evenly."""
    if batch_size % ranks.world_size:
        raise ValueError(f"batch_size={batch_size} does not split over the {ranks.world_size} training processes: "
                         f"each takes batch_size / {ranks.world_size} rows of every batch; pass a multiple of "
                         f"{ranks.world_size}")
    return batch_size // ranks.world_size


def rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of rank ``rank``'s own random stream (dropout) from ``step`` on: distinct per rank, fixed by the run's seed."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------- autograd
class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks: the backward sums the ranks' gradients."""
    return _AllReduceSum.apply(tensor)


def gather_batch(z: torch.Tensor, dim: int) -> torch.Tensor:
    """The ranks' ``z`` (same shape on every rank) concatenated along ``dim`` in rank order; the gradient reaching
    this rank's rows is the sum of every rank's."""
    ranks = Ranks.current()
    parts = [z if r == ranks.rank else torch.zeros_like(z) for r in range(ranks.world_size)]
    return _all_reduce(torch.cat(parts, dim))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class SyncBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` on (N, C) whose training statistics are those of the batch concatenated over the process group,
    on any device (``torch.nn.SyncBatchNorm`` needs CUDA). Statistics in float32 (two passes); eval mode and a single
    process: plain BatchNorm1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and Ranks.current().active):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"SyncBatchNorm1d takes (N, C) inputs, got shape {tuple(x.shape)}")
        xf = x.float()
        totals = _all_reduce(torch.cat((xf.sum(0), xf.new_full((1,), x.shape[0]))))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        var = _all_reduce((xf - mean).square().sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def sync_batchnorm_(model: nn.Module) -> nn.Module:
    """Make every ``BatchNorm1d`` of ``model`` a ``SyncBatchNorm1d`` in place (same parameters and buffers, so the
    state dict and checkpoints are unchanged); -> model."""
    for module in model.modules():
        if type(module) is nn.BatchNorm1d:
            module.__class__ = SyncBatchNorm1d
    return model


class SharedProjectionSIGReg(nn.Module):
    """SIGReg with its random projections drawn from ``generator`` (seeded alike on every rank and saved in
    checkpoints, so all ranks and a resumed run draw the same ones), of the batch concatenated over ranks.

    Under data parallelism the reference SIGReg runs on ``gather_batch`` of the latents (its gradient is then the
    ranks' sum by construction); the fused one all-reduces its sums itself and gives each rank the global loss's
    gradient for its own rows, which is scaled by the world size here for DDP's averaging."""

    def __init__(self, sigreg: nn.Module, generator: torch.Generator, fused: bool):
        super().__init__()
        self.sigreg, self.generator, self.fused = sigreg, generator, fused

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        A = self.sigreg.draw_projection(z, self.generator)
        world = Ranks.current().world_size
        if world == 1:
            return self.sigreg(z, A)
        if self.fused:
            return self.sigreg(_ScaleGrad.apply(z, float(world)), A)
        return self.sigreg(gather_batch(z, dim=-2), A)
