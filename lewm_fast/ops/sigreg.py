"""Fused SIGReg: one dispatch point over the reference (``reference/sigreg.py``), C++ (``csrc/sigreg.cpp``) and Triton
(``kernels/sigreg.py``) implementations, the functional ``sigreg`` and the drop-in ``SIGReg`` module.

The fast backends compute only the (2, T, M, K) cos/sin sums over the batch in a fused op (custom op with a fake kernel
and a registered backward that recomputes sin/cos); the small error formula on those sums is one serial C++ op on the
CPU backend and plain PyTorch otherwise. Under ``torch.distributed`` the sums and the sample count are all-reduced
before the error is formed, so every rank gets the loss of the concatenated batch and, for its own rows, the gradient
of that loss.
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import torch

from .._validation import check_tensor
from ..backends import BACKENDS, csrc_available, resolve_backend
from ..reference.sigreg import SIGReg as ReferenceSIGReg
from ..reference.sigreg import check_sigreg_inputs, sigreg_knots, sigreg_reference


def _sums_dtype(z: torch.Tensor, A: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (z.dtype, A.dtype) else torch.float32


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _register_autograd(op_name: str, backward_op) -> None:
    """The backward of ``sums = op(z, A, t)`` is ``dz = backward_op(grad, z, A, t)`` (no gradient for A or t)."""

    def backward(ctx, grad):
        z, A, t = ctx.saved_tensors
        dz = backward_op(grad, z, A, t) if ctx.needs_input_grad[0] else None
        return dz, None, None

    torch.library.register_autograd(op_name, backward, setup_context=_setup_context)


if csrc_available():

    @torch.library.register_fake("lewm_fast::sigreg_sums")
    def _sums_cpu_fake(z, A, t):
        return z.new_empty((2, z.shape[0], A.shape[1], t.shape[0]), dtype=_sums_dtype(z, A))

    @torch.library.register_fake("lewm_fast::sigreg_sums_backward")
    def _sums_backward_cpu_fake(grad, z, A, t):
        return z.new_empty(z.shape)

    _register_autograd("lewm_fast::sigreg_sums", torch.ops.lewm_fast.sigreg_sums_backward)

    @torch.library.register_fake("lewm_fast::sigreg_loss")
    def _loss_cpu_fake(sums, count, phi, weights):
        return sums.new_empty(())

    @torch.library.register_fake("lewm_fast::sigreg_loss_backward")
    def _loss_backward_cpu_fake(grad, sums, count, phi, weights):
        return torch.empty_like(sums)

    def _loss_cpu_backward(ctx, grad):
        sums, count, phi, weights = ctx.saved_tensors
        return torch.ops.lewm_fast.sigreg_loss_backward(grad, sums, count, phi, weights), None, None, None

    torch.library.register_autograd("lewm_fast::sigreg_loss", _loss_cpu_backward, setup_context=_setup_context)


def sigreg_sums_triton(z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The Triton sums kernel called directly (no custom op, no autograd; on meta tensors inside
    ``ops.launches.record_launches`` it records its launches): z (T,B,D), A (D,M), t (K) -> (2,T,M,K) float32."""
    from ..kernels.sigreg import sigreg_sums

    return sigreg_sums(z, A, t)


def sigreg_sums_backward_triton(grad: torch.Tensor, z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The Triton backward of ``sigreg_sums_triton``, called directly: grad (2,T,M,K) -> dz (T,B,D) in z's dtype."""
    from ..kernels.sigreg import sigreg_sums_backward

    return sigreg_sums_backward(grad, z, A, t)


_sums_triton = torch.library.custom_op("lewm_fast::sigreg_sums_triton", sigreg_sums_triton, mutates_args=())


@_sums_triton.register_fake
def _sums_triton_fake(z, A, t):
    return z.new_empty((2, z.shape[0], A.shape[1], t.shape[0]), dtype=torch.float32)


_sums_backward_triton = torch.library.custom_op(
    "lewm_fast::sigreg_sums_backward_triton", sigreg_sums_backward_triton, mutates_args=()
)


@_sums_backward_triton.register_fake
def _sums_backward_triton_fake(grad, z, A, t):
    return z.new_empty(z.shape)


_register_autograd("lewm_fast::sigreg_sums_triton", _sums_backward_triton)


def _sums_reference(z: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eager (2, T, M, K) sums, materialising (T, B, M, K); used for the reference backend under torch.distributed."""
    x = (z @ A).unsqueeze(-1) * t
    return torch.stack((x.cos().sum(1), x.sin().sum(1)))


_SUMS = {
    "cpu": lambda z, A, t: torch.ops.lewm_fast.sigreg_sums(z, A, t),
    "triton": _sums_triton,
    "reference": _sums_reference,
}


class _AllReduceSums(torch.autograd.Function):
    """Sum the (cos, sin) sums and the sample count over a process group. Every rank forms the same global loss from
    the result, so d loss / d (local sums) = d loss / d (global sums): the backward is the identity."""

    @staticmethod
    def forward(ctx, sums: torch.Tensor, count: torch.Tensor, group) -> Tuple[torch.Tensor, torch.Tensor]:
        import torch.distributed as dist

        buffer = torch.cat((sums.reshape(-1), count.reshape(1).to(sums.dtype)))
        dist.all_reduce(buffer, group=group)
        total = buffer[-1]
        ctx.mark_non_differentiable(total)
        return buffer[:-1].view_as(sums), total

    @staticmethod
    def backward(ctx, grad_sums: torch.Tensor, grad_count: Optional[torch.Tensor]):
        return grad_sums, None, None


def _distributed_active(distributed: Optional[bool]) -> bool:
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return initialised
    if distributed and not initialised:
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
    return bool(distributed)


def _knots(
    t: Optional[torch.Tensor], phi: Optional[torch.Tensor], weights: Optional[torch.Tensor], device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    given = [v is not None for v in (t, phi, weights)]
    if not any(given):
        return tuple(v.to(device) for v in sigreg_knots())
    if not all(given):
        raise ValueError("pass all of t, phi and weights (see reference.sigreg.sigreg_knots) or none of them")
    for name, value in (("t", t), ("phi", phi), ("weights", weights)):
        check_tensor(value, name, ndim=1)
        if value.shape != t.shape:
            raise ValueError(
                f"t, phi and weights must all have shape (K,), got {name} {tuple(value.shape)} vs t {tuple(t.shape)}"
            )
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but z is on {device}")
    return t, phi, weights


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` when lewm_fast is imported
    (that import alone costs ~2 s and ~100k Python objects, which every full garbage collection then walks)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # what torch._dynamo.assume_constant_result sets (tests/ compile fullgraph)
    return fn


@_assume_constant_result  # evaluated once while torch.compile traces: it only reads the installation
def _pick_backend(backend: str, device: torch.device, float64: bool) -> str:
    which = resolve_backend(backend, device)
    if which == "triton" and float64:
        if backend == "auto":
            return "reference"
        raise TypeError("backend='triton' computes in float32; use backend='cpu' or 'reference' for float64 inputs")
    return which


def _loss_from_sums(sums: torch.Tensor, count: torch.Tensor, phi: torch.Tensor, weights: torch.Tensor,
                    backend: str) -> torch.Tensor:
    """mean over (T, M) of count * sum_k w_k [(c_k - phi_k)^2 + s_k^2] with c, s = sums / count."""
    if backend == "cpu":  # one serial loop instead of ~20 small (parallel) PyTorch ops
        return torch.ops.lewm_fast.sigreg_loss(sums, count, phi, weights)
    mean = sums / count
    err = (mean[0] - phi.to(sums.dtype)).square() + mean[1].square()  # (T, M, K)
    return ((err @ weights.to(sums.dtype)) * count).mean()


def sigreg(
    z: torch.Tensor,
    A: torch.Tensor,
    t: Optional[torch.Tensor] = None,
    phi: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    distributed: Optional[bool] = None,
    group=None,
    check_finite: bool = True,
) -> torch.Tensor:
    """SIGReg of z (T,B,D) or (B,D) along the columns of A (D,M) -> scalar; gradients flow to z only.

    t, phi, weights (K,): knots, target characteristic function and weights (default ``sigreg_knots(17)``).
    backend: "auto" (Triton on CUDA, C++ on CPU, reference otherwise) | "triton" | "cpu" | "reference".
    The fast backends compute in float32 (float64 on the C++ path when z or A is float64) whatever the input dtype and
    return the loss in ``promote_types(z.dtype, A.dtype)``.
    distributed: all-reduce the batch statistics over ``group`` so that the value is that of the concatenated batch
    (default: whenever torch.distributed is initialised). All ranks must pass the same A.
    check_finite: raise ValueError when z holds NaN/inf (the value would be NaN). The check reads z's flag on the host,
    a device sync per call on a GPU; pass False in a loop that checks its loss itself (lewm-train does). Skipped while
    torch.compile traces.
    """
    if A is None:
        raise TypeError("A must be a (D, M) tensor; SIGReg (the module) draws one when it is not given")
    check_sigreg_inputs(z, A)
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(z).all()):
        raise ValueError("z holds NaN or inf values, so SIGReg would be NaN (did the encoder diverge?); "
                         "check_finite=False skips this check")
    t, phi, weights = _knots(t, phi, weights, z.device)
    use_distributed = _distributed_active(distributed)
    which = _pick_backend(backend, z.device, _sums_dtype(z, A) == torch.float64)
    if which == "reference" and not use_distributed:
        return sigreg_reference(z, A, t, phi, weights)
    if torch.is_grad_enabled() and any(v.requires_grad for v in (A, t, phi, weights)):
        raise ValueError(
            f"backend={which!r} gives gradients for z only, but A, t, phi or weights requires grad; detach them or "
            "use backend='reference'"
        )
    z3 = z if z.dim() == 3 else z.unsqueeze(0)
    with torch.autocast(z.device.type, enabled=False):  # keep the float32 statistics in float32 under autocast
        sums = _SUMS[which](z3, A, t)
        count = torch.full((), z3.shape[1], dtype=sums.dtype, device=sums.device)
        if use_distributed:
            sums, count = _AllReduceSums.apply(sums, count, group)
        loss = _loss_from_sums(sums, count, phi, weights, which)
    return loss.to(torch.promote_types(z.dtype, A.dtype))


class SIGReg(ReferenceSIGReg):
    """Drop-in for ``reference.SIGReg`` (same buffers ``t``, ``phi``, ``weights`` and ``forward(z, A=None,
    generator=None)``) running the fused op of ``backend``.

    Under torch.distributed (``distributed=None`` means: whenever it is initialised) a projection drawn here is
    broadcast from the group's first rank, so all ranks share A, and the value is that of the batch concatenated over
    ranks. ``check_finite`` (default True): raise on NaN/inf input instead of returning NaN (see ``sigreg``).
    """

    def __init__(self, knots: int = 17, num_proj: int = 1024, backend: str = "auto",
                 distributed: Optional[bool] = None, group=None, check_finite: bool = True):
        super().__init__(knots, num_proj)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.distributed = distributed
        self.group = group
        self.check_finite = check_finite

    def forward(self, z: torch.Tensor, A: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_sigreg_inputs(z, A)
        use_distributed = _distributed_active(self.distributed)
        if A is None:
            A = self.draw_projection(z, generator)
            if use_distributed:
                import torch.distributed as dist

                source = 0 if self.group is None else dist.get_global_rank(self.group, 0)
                dist.broadcast(A, source, group=self.group)
        return sigreg(z, A, self.t, self.phi, self.weights, backend=self.backend, distributed=use_distributed,
                      group=self.group, check_finite=self.check_finite)

    def extra_repr(self) -> str:
        return (f"knots={self.t.numel()}, num_proj={self.num_proj}, backend={self.backend!r}, "
                f"check_finite={self.check_finite}")
