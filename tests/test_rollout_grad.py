"""The differentiable rollout: gradients of RolloutEngine.costs / paired_costs / rollout with respect to the candidate
actions on every backend against autograd through the reference LeWM (fp32: 1e-4 of the largest gradient entry),
float64 gradcheck of the fused blocks' backward (C++ window attention forward + backward), frozen weights (no
parameter gradient), and no change under no_grad. Triton runs under TRITON_INTERPRET=1 when there is no GPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest
import torch

from lewm_fast.backends import csrc_available, triton_available
from lewm_fast.ops.predictor import CpuOps, PredictorOps
from lewm_fast.planning import RolloutEngine
from lewm_fast.planning.fused_predictor import FusedRollout, UnboundModulations

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GRAD_RTOL = 1e-4  # fp32, relative to the largest entry of the reference gradient


def _engine(model, kind):
    if kind == "cpu" and not csrc_available():
        pytest.skip("needs the C++ extension lewm_fast._C")
    if kind == "triton" and not triton_available(DEVICE):
        pytest.skip("needs triton with CUDA or TRITON_INTERPRET=1")
    if kind == "fused_reference":  # the fused schedule on the plain-PyTorch ops (the "auto" fallback)
        engine = RolloutEngine(model, backend="reference")
        engine.fused = FusedRollout(model, PredictorOps())
        return engine
    return RolloutEngine(model, backend=kind)


def _problem(model, b, h, n, t, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, a = model.latent_dim, model.action_dim
    out = (torch.randn(b, h, d, generator=g), torch.randn(b, h - 1, a, generator=g), torch.randn(b, d, generator=g),
           torch.randn(b, n, t, a, generator=g))
    return tuple(x.to(device) for x in out)


def _grad(fn, candidates, weights=None):
    """d sum(weights * fn(cand)) / d cand, for a fresh leaf copy of candidates."""
    cand = candidates.clone().requires_grad_(True)
    out = fn(cand)
    (out * (weights if weights is not None else 1.0)).sum().backward()
    return cand.grad


def _close(got, want, rtol=GRAD_RTOL):
    scale = want.abs().max()
    assert scale > 0
    torch.testing.assert_close(got / scale, want / scale, rtol=0.0, atol=rtol)


BACKENDS = ["cpu", "triton", "fused_reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("history", [1, 3])
def test_costs_gradient_matches_reference(tiny_model, backend, history):
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, 2, history, 5, 4, DEVICE)
    ref, fast = RolloutEngine(model, backend="reference"), _engine(model, backend)
    want = _grad(lambda c: ref.costs(ctx, hist, goal, c), cand)
    got = _grad(lambda c: fast.costs(ctx, hist, goal, c), cand)
    _close(got, want)
    context = fast.prepare(ctx, hist)  # the prepared context gives the same gradient
    _close(_grad(lambda c: fast.costs(ctx, hist, goal, c, context=context), cand), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("history", [1, 3])
def test_paired_costs_gradient_matches_reference(tiny_model, backend, history):
    model = tiny_model.to(DEVICE)
    ctx, _, goal, cand = _problem(model, 2, history, 3, history + 2, DEVICE, seed=1)
    ref, fast = RolloutEngine(model, backend="reference"), _engine(model, backend)
    _close(_grad(lambda c: fast.paired_costs(ctx, goal, c), cand), _grad(lambda c: ref.paired_costs(ctx, goal, c), cand))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_rollout_gradient_matches_reference(tiny_model, backend):
    """Every rolled-out latent (not only the last one's cost) carries its gradient back to the actions."""
    model = tiny_model.to(DEVICE)
    ctx, hist, _, cand = _problem(model, 1, 3, 4, 3, DEVICE, seed=2)
    w = torch.randn(1, 4, 6, model.latent_dim, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    ref, fast = RolloutEngine(model, backend="reference"), _engine(model, backend)
    _close(_grad(lambda c: fast.rollout(ctx, hist, c), cand, w), _grad(lambda c: ref.rollout(ctx, hist, c), cand, w))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_weights_and_context_get_no_gradient(tiny_model, backend):
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, 1, 3, 3, 3, DEVICE)
    ctx.requires_grad_(True)
    engine = _engine(model, backend)
    cand = cand.requires_grad_(True)
    engine.costs(ctx, hist, goal, cand).sum().backward()
    engine.paired_costs(ctx, goal, cand).sum().backward()
    assert cand.grad is not None and ctx.grad is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_no_graph_without_grad(tiny_model, backend):
    """Under no_grad, or with candidates that do not require grad, the costs carry no graph and equal the
    differentiable ones."""
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, 2, 3, 4, 3, DEVICE)
    engine = _engine(model, backend)
    plain = engine.costs(ctx, hist, goal, cand)
    with torch.no_grad():
        under_no_grad = engine.costs(ctx, hist, goal, cand.clone().requires_grad_(True))
    tracked = engine.costs(ctx, hist, goal, cand.clone().requires_grad_(True))
    assert not plain.requires_grad and not under_no_grad.requires_grad and tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(under_no_grad, plain, rtol=0, atol=0)


class WindowRows(PredictorOps):
    """The plain ops, recording how many window tokens each to_qkv pre-norm GEMM ran (the ``x`` of adaln_linear
    whose weight is to_qkv's)."""

    def __init__(self, qkv_width):
        self.qkv_width, self.tokens = qkv_width, []

    def adaln_linear(self, x, shift, mul, eps1, eps2, weight, *args, **kwargs):
        if weight.shape[0] == self.qkv_width:
            self.tokens.append(x.shape[1])
        return super().adaln_linear(x, shift, mul, eps1, eps2, weight, *args, **kwargs)


def test_gradient_rollout_runs_the_growing_windows_new_token_only(tiny_model):
    """Under autograd, while the window grows from one context frame (history 1, 3-frame window), a step runs its new
    token only and attends to the keys / values the earlier steps computed (kept out of place, so the gradient flows
    through them): 1, 1, 1, 3 tokens per block for 4 steps, where recomputing the window ran 1, 2, 3, 3. The
    gradient still equals autograd through the reference."""
    ctx, hist, goal, cand = _problem(tiny_model, 2, 1, 5, 4, torch.device("cpu"))
    engine = RolloutEngine(tiny_model, backend="reference")
    engine.fused = FusedRollout(tiny_model, PredictorOps())
    spy = WindowRows(engine.fused.packed.blocks[0].qkv_w.shape[0])
    engine.fused.ops = spy
    got = _grad(lambda c: engine.costs(ctx, hist, goal, c), cand)
    depth = engine.fused.packed.depth
    assert spy.tokens == [1] * depth * 3 + [3] * depth
    ref = RolloutEngine(tiny_model, backend="reference")
    _close(got, _grad(lambda c: ref.costs(ctx, hist, goal, c), cand))


@pytest.mark.skipif(not csrc_available(), reason="needs the C++ extension lewm_fast._C")
@pytest.mark.parametrize("prefix", [0, 2])
def test_blocks_gradcheck_float64(tiny_model, prefix):
    """torch.autograd.gradcheck (float64, fast mode: random projections of the Jacobian) of all predictor blocks of one rollout step on the CPU ops (C++ window
    attention forward and backward, the folded GEMMs, the unbound modulations), last-token readout, on a window with
    and without a shared prefix."""
    torch.manual_seed(0)
    fused = FusedRollout(tiny_model.double(), CpuOps(), torch.float64)
    p = fused.packed
    m, s, b = 4, 2, 2
    inner = p.heads * p.dim_head
    x = torch.randn(m, s, p.hidden, dtype=torch.float64, requires_grad=True)
    mods = torch.randn(m, s, p.depth, 6, p.hidden, dtype=torch.float64).mul_(0.5).requires_grad_(True)
    pre = [torch.randn(b, prefix, 3 * inner, dtype=torch.float64) for _ in range(p.depth)] if prefix else None

    def step(x, mods):
        return fused.blocks(x, UnboundModulations(mods), pre, "last")[0]

    assert torch.autograd.gradcheck(step, (x, mods), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.skipif(not triton_available(DEVICE), reason="needs triton with CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("paired", [False, True])
def test_gradient_launches_are_recorded_for_aot(tiny_model, paired):
    """precompile.record_gradient_launches (what lewm_fast.aot compiles for a gradient planner's step) records the
    Triton window attention of every block, all window tokens queried (a non-last block under autograd) and one."""
    from lewm_fast.precompile import record_gradient_launches

    launches = record_gradient_launches(tiny_model, 2, 3, num_samples=3, horizon=3, paired=paired)
    attention = [x.kwargs for x in launches if x.name == "_window_attention_kernel"]
    assert attention and any(k["NQ"] == k["S"] > 1 for k in attention) and any(k["NQ"] == 1 for k in attention)
    assert all(p.device.type == "cpu" and p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("history", [1, 3])
def test_bf16_gradient_tolerance(tiny_model, history):
    """bf16 rollout (Triton backend; bf16 GEMM and attention inputs, float32 accumulation and residual stream):
    gradients within 0.1 of the largest entry of the float32 reference gradient and a cosine similarity >= 0.995
    (measured on this tiny random model: 3-6 % and >= 0.999)."""
    if not triton_available(DEVICE):
        pytest.skip("needs triton with CUDA or TRITON_INTERPRET=1")
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, 2, history, 5, 4, DEVICE)
    ref, bf16 = RolloutEngine(model, backend="reference"), RolloutEngine(model, backend="triton", dtype=torch.bfloat16)
    want = _grad(lambda c: ref.costs(ctx, hist, goal, c), cand)
    got = _grad(lambda c: bf16.costs(ctx, hist, goal, c), cand)
    _close(got, want, rtol=0.1)
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0) >= 0.995
