"""Fused SIGReg (C++ and Triton backends, functional and module API) against the reference.

Tolerances: float32 value rtol 1e-5, gradient rtol 1e-4 (plus atol 1e-5 of the gradient's scale). bfloat16/float16 z
are upcast exactly inside the fused ops, so the value matches the float32 reference on the upcast input to the same
float32 tolerance; the gradient comes back in the input dtype and matches to that dtype's rounding (rtol 2^-7 bf16,
2^-10 fp16). The Triton kernels run under TRITON_INTERPRET=1 on CPU tensors (small shapes) when there is no GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lewm_fast.backends import csrc_available, triton_available  # noqa: E402
from lewm_fast.ops.sigreg import SIGReg, sigreg  # noqa: E402
from lewm_fast.reference.sigreg import SIGReg as ReferenceSIGReg  # noqa: E402
from lewm_fast.reference.sigreg import random_projection, sigreg_knots, sigreg_reference  # noqa: E402

needs_csrc = pytest.mark.skipif(not csrc_available(), reason="C++ extension lewm_fast._C not built")
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(torch.device(TRITON_DEVICE)),
                                  reason="needs triton with CUDA or TRITON_INTERPRET=1")

# (T, B, D, M): odd sizes, sizes not multiples of any block, T = 1, a single sample, the training shape
CPU_SHAPES = [(2, 33, 40, 70), (1, 8, 5, 3), (3, 17, 24, 130), (1, 1, 6, 16), (4, 128, 192, 1024)]
TRITON_SHAPES = [(2, 33, 40, 70), (1, 17, 24, 20), (2, 5, 7, 3)]  # the interpreter is slow: keep these tiny


def _inputs(shape, seed=0, dtype=torch.float32, device="cpu"):
    T, B, D, M = shape
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(T, B, D, generator=g).mul_(1.3).to(device=device, dtype=dtype)
    A = random_projection(D, M, generator=g).to(device)
    return z, A


def _value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z)
    value.backward()
    return value.detach(), z.grad


def _reference(z, A):
    t, phi, w = (v.to(z.device) for v in sigreg_knots(dtype=z.dtype))
    return _value_and_grad(lambda zz: sigreg_reference(zz, A, t, phi, w), z)


def _assert_matches_reference(z, A, backend, grad_rtol=1e-4):
    value, grad = _value_and_grad(lambda zz: sigreg(zz, A, backend=backend), z)
    ref_value, ref_grad = _reference(z.float(), A)
    assert value.dtype == torch.promote_types(z.dtype, A.dtype) and grad.dtype == z.dtype
    torch.testing.assert_close(value.float(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=grad_rtol, atol=1e-5 * float(ref_grad.abs().max()))


@needs_csrc
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
def test_cpu_matches_reference(shape):
    _assert_matches_reference(*_inputs(shape), backend="cpu")


@needs_triton
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
def test_triton_matches_reference(shape):
    _assert_matches_reference(*_inputs(shape, device=TRITON_DEVICE), backend="triton")


BACKENDS = [pytest.param("cpu", marks=needs_csrc), pytest.param("triton", marks=needs_triton)]


def _device(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """The training call passes emb.transpose(0, 1); A may be a strided view too."""
    device = _device(backend)
    emb = torch.randn(19, 3, 21, device=device)  # (B, T, D)
    A = random_projection(21, 2 * 37, generator=torch.Generator().manual_seed(1)).to(device)[:, ::2]
    z = emb.transpose(0, 1)
    assert not z.is_contiguous() and not A.is_contiguous()
    _assert_matches_reference(z, A, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_dimensional_input(backend):
    z, A = _inputs((1, 23, 9, 33), seed=2, device=_device(backend))
    _assert_matches_reference(z[0], A, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, grad_rtol", [(torch.bfloat16, 2**-7), (torch.float16, 2**-10)], ids=["bf16", "fp16"])
def test_reduced_precision_accumulates_in_float32(backend, dtype, grad_rtol):
    z, A = _inputs((2, 33, 40, 70), seed=3, dtype=dtype, device=_device(backend))
    _assert_matches_reference(z, A, backend, grad_rtol=grad_rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_keeps_float32_statistics(backend):
    """Training runs under bf16 autocast: the fused path must not drop its float32 error formula to bf16."""
    z, A = _inputs((2, 17, 24, 20), seed=9, device=_device(backend))
    expected, expected_grad = _value_and_grad(lambda zz: sigreg(zz, A, backend=backend), z)
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        value, grad = _value_and_grad(lambda zz: sigreg(zz, A, backend=backend), z)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@needs_csrc
def test_cpu_float64_matches_reference_tightly():
    z, A = _inputs((2, 13, 7, 19), seed=4)
    z, A = z.double(), A.double()
    t, phi, w = sigreg_knots(dtype=torch.float64)
    value, grad = _value_and_grad(lambda zz: sigreg(zz, A, t, phi, w, backend="cpu"), z)
    ref_value, ref_grad = _reference(z, A)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


@needs_csrc
def test_cpu_results_do_not_depend_on_the_thread_count():
    """Each parallel task of the C++ op owns its outputs, so the op may run a region on fewer threads (it does while the
    machine is oversubscribed) without changing a bit: sums and gradients on 1 and 2 threads are equal."""
    z, A = _inputs((4, 128, 192, 1024), seed=6)  # above the size where the op goes parallel
    t = sigreg_knots()[0]
    grad = torch.randn(2, 4, 1024, len(t), generator=torch.Generator().manual_seed(7))
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((torch.ops.lewm_fast.sigreg_sums(z, A, t),
                            torch.ops.lewm_fast.sigreg_sums_backward(grad, z, A, t)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


@needs_csrc
def test_cpu_op_gradcheck_float64():
    z, A = _inputs((2, 6, 5, 7), seed=5)
    z, A = z.double().requires_grad_(True), A.double()
    t, phi, w = sigreg_knots(dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda zz: torch.ops.lewm_fast.sigreg_sums(zz, A, t), (z,))
    sums = torch.ops.lewm_fast.sigreg_sums(z.detach(), A, t).requires_grad_(True)
    count = torch.tensor(6.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: torch.ops.lewm_fast.sigreg_loss(s, count, phi, w), (sums,))
    assert torch.autograd.gradcheck(lambda zz: sigreg(zz, A, t, phi, w, backend="cpu"), (z,))


@needs_csrc
def test_cpu_op_registration_and_compile():
    """Schema, fake kernel and autograd registration (opcheck), then a fullgraph torch.compile of the functional."""
    z, A = _inputs((2, 9, 6, 11), seed=6)
    t, phi, w = sigreg_knots()
    torch.library.opcheck(torch.ops.lewm_fast.sigreg_sums, (z.requires_grad_(True), A, t))
    grad = torch.randn(2, 2, 11, 17)
    torch.library.opcheck(torch.ops.lewm_fast.sigreg_sums_backward, (grad, z.detach(), A, t))
    sums, count = torch.ops.lewm_fast.sigreg_sums(z.detach(), A, t), torch.tensor(9.0)
    torch.library.opcheck(torch.ops.lewm_fast.sigreg_loss, (sums.requires_grad_(True), count, phi, w))
    torch.library.opcheck(torch.ops.lewm_fast.sigreg_loss_backward, (torch.tensor(0.7), sums.detach(), count, phi, w))
    compiled = torch.compile(lambda zz: sigreg(zz, A, t, phi, w, backend="cpu"), backend="aot_eager", fullgraph=True)
    value, dz = _value_and_grad(compiled, z)
    ref_value, ref_dz = _value_and_grad(lambda zz: sigreg(zz, A, t, phi, w, backend="cpu"), z)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(dz, ref_dz)


@needs_csrc
def test_module_is_a_drop_in_for_the_reference():
    z = torch.randn(4, 32, 24)
    fast, ref = SIGReg(num_proj=96), ReferenceSIGReg(num_proj=96)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    fast.load_state_dict(ref.state_dict(), strict=True)
    values = []
    for module in (fast, ref):
        values.append(_value_and_grad(lambda zz: module(zz, generator=torch.Generator().manual_seed(11)), z))
        torch.manual_seed(12)  # no generator: the global stream, drawn exactly like the reference draws it
        values.append(_value_and_grad(module, z))
    for fast_result, ref_result in zip(values[:2], values[2:]):
        torch.testing.assert_close(fast_result[0], ref_result[0], rtol=1e-5, atol=1e-6)
        scale = float(ref_result[1].abs().max())
        torch.testing.assert_close(fast_result[1], ref_result[1], rtol=1e-4, atol=1e-5 * scale)


def test_auto_and_reference_backends():
    z, A = _inputs((2, 10, 8, 12), seed=7)
    t, phi, w = sigreg_knots()
    assert torch.equal(sigreg(z, A, backend="reference"), sigreg_reference(z, A, t, phi, w))
    expected = "cpu" if csrc_available() else "reference"
    assert torch.equal(sigreg(z, A), sigreg(z, A, backend=expected))
    assert torch.equal(SIGReg(num_proj=12, backend="reference")(z, A=A), ReferenceSIGReg(num_proj=12)(z, A=A))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("knots", [[0.0, 0.4, 1.1, 2.0, 2.9], [0.5, 1.0, 1.5, 2.0], [1.5]],
                         ids=["uneven", "offset", "one"])
def test_custom_knots(backend, knots):
    """Knots that are not k * dt take the per-knot sin/cos path of the fused ops (the default knots rotate)."""
    device = _device(backend)
    z, A = _inputs((2, 21, 8, 12), seed=8, device=device)
    t = torch.tensor(knots, device=device)
    phi, w = torch.exp(-t.square() / 2), torch.linspace(0.2, 0.9, len(knots), device=device)
    value, grad = _value_and_grad(lambda zz: sigreg(zz, A, t, phi, w, backend=backend), z)
    ref_value, ref_grad = _value_and_grad(lambda zz: sigreg_reference(zz, A, t, phi, w), z)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_inputs(backend):
    A = torch.randn(4, 8)
    with pytest.raises(ValueError, match="dimensions"):
        sigreg(torch.randn(2, 3, 4, 5), A, backend=backend)
    with pytest.raises(ValueError, match="D=4"):
        sigreg(torch.randn(2, 3, 4), torch.randn(5, 8), backend=backend)
    with pytest.raises(ValueError, match="empty"):
        sigreg(torch.randn(2, 0, 4), A, backend=backend)
    with pytest.raises(TypeError, match="floating"):
        sigreg(torch.ones(2, 3, 4, dtype=torch.int64), A, backend=backend)
    with pytest.raises(TypeError, match="A must be"):
        sigreg(torch.randn(2, 3, 4), None, backend=backend)
    with pytest.raises(ValueError, match="all of t, phi and weights"):
        sigreg(torch.randn(2, 3, 4), A, t=torch.linspace(0, 3, 17), backend=backend)
    t, phi, w = sigreg_knots()
    with pytest.raises(ValueError, match="shape"):
        sigreg(torch.randn(2, 3, 4), A, t, phi[:5], w, backend=backend)
    with pytest.raises(ValueError, match="dimensions"):
        SIGReg(num_proj=8, backend=backend)(torch.randn(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        SIGReg(backend="cuda")


@needs_csrc
def test_gradient_for_A_or_knots_is_refused():
    with pytest.raises(ValueError, match="requires grad"):
        sigreg(torch.randn(2, 3, 4), torch.randn(4, 8, requires_grad=True), backend="cpu")
    t, phi, w = sigreg_knots()
    with pytest.raises(ValueError, match="requires grad"):
        sigreg(torch.randn(2, 3, 4), torch.randn(4, 8), t, phi, w.requires_grad_(True), backend="cpu")


@needs_triton
def test_triton_refuses_float64():
    z, A = _inputs((1, 4, 3, 5), device=TRITON_DEVICE)
    with pytest.raises(TypeError, match="float64"):
        sigreg(z.double(), A.double(), backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(4, 128, 192, 1024), (1, 8192, 192, 512), (3, 1000, 200, 300)], ids=str)
def test_triton_full_shapes_on_cuda(shape):
    z, A = _inputs(shape, device="cuda")
    _assert_matches_reference(z, A, "triton")
    _assert_matches_reference(z.bfloat16(), A, "triton", grad_rtol=2**-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_input_raises_unless_the_check_is_off(backend):
    device = _device(backend)
    z, A = _inputs((2, 9, 6, 11), seed=3, device=device)
    z[1, 4, 2] = float("nan")
    with pytest.raises(ValueError, match="z holds NaN or inf values"):
        sigreg(z, A, backend=backend)
    with pytest.raises(ValueError, match="z holds NaN or inf values"):
        SIGReg(num_proj=11, backend=backend)(z.masked_fill(torch.isnan(z), float("inf")), A)
    assert torch.isnan(sigreg(z, A, backend=backend, check_finite=False))
    assert "check_finite=False" in repr(SIGReg(backend=backend, check_finite=False))
