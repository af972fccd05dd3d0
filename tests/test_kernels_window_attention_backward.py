"""The window attention's backward (``ops.attention_grad``'s analytic backward in torch ops, the C++ kernel
``window_attention_backward`` and the Triton kernel ``kernels/window_attention_backward.py``) behind the C++ and
Triton forwards, against autograd through the plain-PyTorch
``PredictorOps.window_attention``: small, odd and strided shapes, with and without a shared prefix, fewer queries than
tokens; float64 gradcheck of both backwards. Triton runs under TRITON_INTERPRET=1 when there is no GPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest
import torch

from lewm_fast.backends import csrc_available, triton_available
from lewm_fast.ops.attention_grad import window_attention_backward, window_attention_grad
from lewm_fast.ops.predictor import CpuOps, PredictorOps, TritonOps

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (M, S, num_queries, P, B, heads, dh): window lengths 1-3, prefixes, odd head counts / widths
SHAPES = [(6, 3, 3, 0, 2, 2, 8), (6, 2, 1, 1, 3, 2, 8), (4, 1, 1, 2, 2, 3, 5), (5, 3, 2, 0, 1, 1, 16),
          (3, 3, 1, 0, 3, 4, 64), (4, 2, 2, 1, 2, 3, 12)]


def _forwards():
    out = {}
    if csrc_available():
        out["cpu"] = (CpuOps._window_attention_forward, CpuOps._window_attention_backward)
    if triton_available(DEVICE):
        out["triton"] = (TritonOps._window_attention_forward, TritonOps._window_attention_backward)
    return out


def _inputs(shape, strided, device, dtype=torch.float32, seed=0):
    m, s, nq, p, b, heads, dh = shape
    g = torch.Generator().manual_seed(seed)
    width = 3 * heads * dh
    big = torch.randn(2 * m, s + 1, width, generator=g, dtype=dtype).to(device)
    qkv = big[::2, 1:] if strided else big[:m, :s].contiguous()  # strided: a view on the first two axes
    pre = torch.randn(b, p, width, generator=g, dtype=dtype).to(device) if p else None
    return qkv, pre


@pytest.mark.parametrize("impl", ["cpu", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_backward_matches_autograd(impl, shape, strided):
    forwards = _forwards()
    if impl not in forwards:
        pytest.skip(f"{impl} backend unavailable")
    if impl == "cpu" and DEVICE.type != "cpu":
        pytest.skip("the C++ ops take CPU tensors")
    forward, backward = forwards[impl]
    m, s, nq, p, b, heads, dh = shape
    qkv, pre = _inputs(shape, strided, DEVICE)
    grad = torch.randn(m, nq, heads * dh, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    want_in = qkv.detach().clone().requires_grad_(True)
    want_out = PredictorOps().window_attention(want_in, heads, pre, nq)
    want_out.backward(grad)
    got_in = qkv.detach().clone().requires_grad_(True)
    got_out = window_attention_grad(got_in, heads, pre, nq, forward, backward)
    got_out.backward(grad)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_in.grad, want_in.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not csrc_available(), reason="needs the C++ extension lewm_fast._C (a float64 forward)")
@pytest.mark.parametrize("impl", ["torch", "cpu"])
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_backward_gradcheck_float64(impl, shape):
    """Both backwards behind the C++ forward, which computes float64 in float64 (the plain-PyTorch one in float32)."""
    m, s, nq, p, b, heads, dh = shape
    qkv, pre = _inputs(shape, False, "cpu", torch.float64)
    forward = CpuOps._window_attention_forward
    backward = window_attention_backward if impl == "torch" else CpuOps._window_attention_backward
    fn = lambda t: window_attention_grad(t, heads, pre, nq, forward, backward)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (qkv.requires_grad_(True),))


def test_prefix_gets_no_gradient():
    qkv, pre = _inputs(SHAPES[1], False, "cpu")
    pre.requires_grad_(True)
    qkv.requires_grad_(True)
    window_attention_grad(qkv, 2, pre, 1, PredictorOps().window_attention).sum().backward()
    assert qkv.grad is not None and pre.grad is None
