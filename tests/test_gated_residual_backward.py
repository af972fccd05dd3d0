"""The differentiable gated GEMM ``x + gate * (a @ W^T + b)`` on the Triton backend
(``kernels/gated_residual_backward.py`` behind ``TritonOps.gated_residual`` / ``attention_residual`` under autograd)
against autograd through the plain-PyTorch ``PredictorOps``: values and the gradients of x, a and gate, on odd shapes
(rows not a multiple of the tile, N and K not multiples of the blocks), strided row views, every subset of inputs
requiring grad, and what the backward saves. Tolerances relative to the largest entry: fp32 1e-4; bf16 GEMM operands
2e-2 (the reference rounds ``a @ W^T`` to bf16 where the kernel keeps it in float32, and both round
``grad_out * gate`` to bf16 for the GEMM); fp32 with TF32 dots 5e-3 (CUDA only: the interpreter multiplies exact
fp32). Measured under the interpreter on these shapes: at most 2.4e-7 (fp32) and 7.8e-3 (bf16, grad_a). Triton runs
under TRITON_INTERPRET=1 when there is no GPU. The end-to-end check (RolloutEngine gradients on
backend "triton" against the reference) is in test_rollout_grad.py."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest
import torch

from lewm_fast.backends import triton_available
from lewm_fast.ops.predictor import PredictorOps, TritonOps

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_available(DEVICE), reason="needs triton with CUDA or TRITON_INTERPRET=1")
REF = PredictorOps()
RTOL = {"fp32": 1e-4, "bf16": 2e-2, "tf32": 5e-3}

# (M, S, N, K): rows not a multiple of 16, N / K not multiples of the blocks (N > 32: several reduction slices in the
# backward; K > 32: several output column tiles), one window token, more than SMALL_ROWS rows (64-row tiles)
SHAPES = [(7, 3, 37, 29), (5, 1, 16, 70), (5, 3, 70, 45), (2051, 2, 24, 40)]


def _randn(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)


def _inputs(shape, dtype, strided, seed=0):
    """x, gate (M, S, N) float32, a (M, S, K) and weight (N, K) in dtype, bias (N,), grad_out (M, S, N); strided:
    x, gate, a and grad_out are views on their row axes (as the rollout passes x[:, -1:] and modulation slices)."""
    m, s, n, k = shape
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = _randn(m, s + 1, n, gen=g)[:, 1:]
        gate = _randn(m, s + 2, 6, n, gen=g)[:, 1:s + 1, 2]
        a = _randn(2 * m, s, k, gen=g, dtype=dtype)[::2]
        grad = _randn(m, s, 2, n, gen=g)[:, :, 1]
    else:
        x, gate, a = _randn(m, s, n, gen=g), _randn(m, s, n, gen=g), _randn(m, s, k, gen=g, dtype=dtype)
        grad = _randn(m, s, n, gen=g)
    w = _randn(n, k, gen=g, dtype=dtype, scale=k ** -0.5)
    return x, a, w, _randn(n, gen=g), gate, grad


def _run(fn, x, a, w, bias, gate, grad, needs=(True, True, True)):
    """fn's output and the gradients of (x, a, gate) for grad_out ``grad`` (None where not required)."""
    leaves = [t.detach().clone().requires_grad_(r) for t, r in zip((x, a, gate), needs)]
    out = fn(leaves[0], leaves[1], w, bias, leaves[2])
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _close(got, want, rtol):
    scale = want.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(got.float() / scale, want.float() / scale, rtol=0.0, atol=rtol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype, precision, tol", [(torch.float32, "ieee", "fp32"), (torch.float32, "tf32", "tf32"),
                                                   (torch.bfloat16, "ieee", "bf16")])
def test_values_and_gradients_match_autograd_through_the_reference(shape, strided, dtype, precision, tol):
    if shape[0] > 1000 and (strided or precision == "tf32"):
        pytest.skip("the large shape once per dtype: the interpreter is slow")
    x, a, w, bias, gate, grad = _inputs(shape, dtype, strided)
    x0 = x.clone()
    want = _run(REF.gated_residual, x, a, w, bias, gate, grad)
    got = _run(TritonOps(precision).gated_residual, x, a, w, bias, gate, grad)
    for name, g, r in zip(("out", "grad_x", "grad_a", "grad_gate"), got, want):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        _close(g, r, RTOL[tol] if DEVICE.type == "cuda" or tol != "tf32" else RTOL["fp32"])
    torch.testing.assert_close(x, x0, rtol=0, atol=0)  # out of place: x untouched


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, False)])
def test_only_the_required_gradients(needs):
    x, a, w, bias, gate, grad = _inputs((6, 2, 40, 24), torch.float32, strided=True, seed=1)
    want = _run(REF.gated_residual, x, a, w, bias, gate, grad, needs)
    got = _run(TritonOps().gated_residual, x, a, w, bias, gate, grad, needs)
    for g, r, need in zip(got[1:], want[1:], needs):
        assert (g is None) == (not need)
        if need:
            _close(g, r, RTOL["fp32"])


@pytest.mark.parametrize("prefix", [0, 2])
def test_attention_residual_projection_under_autograd(prefix):
    """attention_residual under autograd: the Triton window attention (and its backward), then the gated GEMM's
    Function: gradients of x, qkv and gate against the reference; x untouched."""
    m, s, nq, heads, dh, n = 4, 3, 3, 2, 8, 20
    g = torch.Generator().manual_seed(2)
    qkv = _randn(m, s, 3 * heads * dh, gen=g)
    pre = _randn(2, prefix, 3 * heads * dh, gen=g) if prefix else None
    w, bias = _randn(n, heads * dh, gen=g, scale=0.2), _randn(n, gen=g)
    x, gate, grad = _randn(m, nq, n, gen=g), _randn(m, nq, n, gen=g), _randn(m, nq, n, gen=g)

    def run(ops):
        leaves = [t.clone().requires_grad_(True) for t in (x, qkv, gate)]
        out = ops.attention_residual(leaves[0], leaves[1], heads, w, bias, leaves[2], pre)
        out.backward(grad)
        return [out.detach()] + [t.grad for t in leaves]

    for got, want in zip(run(TritonOps()), run(REF)):
        _close(got, want, RTOL["fp32"])


def test_saves_y_not_a_and_no_weight_gradient():
    """What the backward keeps: the (M, S, N) float32 GEMM output y (N columns, not a's K), the gate and the weight
    (tensors that live anyway); a is not saved. y only when the gate needs a gradient. Weights get no gradient; a
    weight that requires grad takes the torch ops (and gets its gradient)."""
    from lewm_fast.kernels.gated_residual_backward import gated_residual_grad

    m, s, n, k = 5, 3, 24, 64
    x, a, w, bias, gate, grad = _inputs((m, s, n, k), torch.float32, strided=False, seed=3)
    for gate_grad in (True, False):
        saved = []
        leaves = [t.clone().requires_grad_(r) for t, r in ((x, True), (a, True), (gate, gate_grad))]
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = gated_residual_grad(*leaves[:2], w, bias, leaves[2])
        fresh = [t for t in saved if t is not None and t.data_ptr() not in (gate.data_ptr(), leaves[2].data_ptr(),
                                                                          w.data_ptr())]
        assert [(tuple(t.shape), t.dtype) for t in fresh] == ([((m, s, n), torch.float32)] if gate_grad else [])
        assert all(t.data_ptr() != leaves[1].data_ptr() for t in saved if t is not None)
        out.backward(grad)
    assert w.grad is None and bias.grad is None
    w_leaf = w.clone().requires_grad_(True)
    out = TritonOps().gated_residual(x, a, w_leaf, bias, gate.clone().requires_grad_(True))
    out.backward(grad)
    want = torch.einsum("msn,msk->nk", grad * gate, a)
    _close(w_leaf.grad, want, RTOL["fp32"])


def test_bad_inputs():
    from lewm_fast.kernels.gated_residual_backward import gated_residual_grad

    x = torch.zeros(2, 3, 8, device=DEVICE, requires_grad=True)
    a = torch.zeros(2, 3, 5, device=DEVICE)
    with pytest.raises(ValueError, match="weight must be"):
        gated_residual_grad(x, a, torch.zeros(5, 8, device=DEVICE), None, x)
    with pytest.raises(ValueError, match="share a dtype"):
        gated_residual_grad(x, a, torch.zeros(8, 5, device=DEVICE, dtype=torch.bfloat16), None, x)
    with pytest.raises(ValueError, match="must agree"):
        gated_residual_grad(x, a, torch.zeros(8, 5, device=DEVICE), None, x[:, :2])


def test_gradient_launches_are_recorded_for_aot(tiny_model):
    """precompile.record_gradient_launches (what lewm_fast.aot compiles for a gradient planner's step) records the
    gated GEMM's forward (with y saved) and backward for both projections of every block."""
    from lewm_fast.precompile import record_gradient_launches

    launches = record_gradient_launches(tiny_model, 2, 3, num_samples=3, horizon=3)
    names = [x.name for x in launches]
    depth = len(tiny_model.predictor.transformer.layers)
    assert names.count("_gated_residual_save_kernel") == names.count("_gated_residual_backward_kernel") > 0
    assert names.count("_gated_residual_save_kernel") % (2 * depth) == 0
    backward = [x.kwargs for x in launches if x.name == "_gated_residual_backward_kernel"]
    assert all(k["GRAD_A"] and k["GRAD_GATE"] for k in backward)


def test_one_plan_per_signature(monkeypatch):
    """Forward and backward validate and tile once per argument signature (``PlanCache``), checked on meta tensors."""
    from lewm_fast.kernels import gated_residual_backward as module
    from lewm_fast.ops.launches import record_launches

    built = []
    for name in ("_forward_plan", "_backward_plan"):
        plan = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, plan=plan: built.append(plan.__name__) or plan(*a))
    module._FORWARD_PLANS.clear()
    module._BACKWARD_PLANS.clear()
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
    with record_launches() as launches:
        for m in (6, 6, 6, 7):
            x, gate, w = meta(m, 3, 48), meta(m, 3, 48), meta(48, 32)
            _, y = module.gated_residual_forward(x, meta(m, 3, 32), w, meta(48), gate)
            module.gated_residual_backward(meta(m, 3, 48), gate, y, w)
    assert sorted(built) == ["_backward_plan"] * 2 + ["_forward_plan"] * 2
    assert [x.name for x in launches] == ["_gated_residual_save_kernel", "_gated_residual_backward_kernel"] * 4
