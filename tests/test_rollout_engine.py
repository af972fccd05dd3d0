"""RolloutEngine and accelerate() against the reference LeWM (CEMSolver.costs, LeWM.rollout / predict) on a tiny
random model: same candidates -> same costs. fp32 paths agree to ~1e-6 relative (tolerance 2e-5); the bf16 Triton
path within 3e-2 of the cost scale. Triton runs under TRITON_INTERPRET=1 when there is no GPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import warnings

import pytest
import torch
from torch import nn

from lewm_fast import build_model
from lewm_fast.backends import csrc_available, triton_available
from lewm_fast.planning import AcceleratedLeWM, RolloutEngine, accelerate
from lewm_fast.ops.predictor import PredictorOps, make_ops
from lewm_fast.planning.fused_predictor import FusedRollout
from lewm_fast.reference import MLP, CEMSolver
from conftest import randomize_, tiny_config

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not triton_available(DEVICE), reason="needs triton with CUDA or TRITON_INTERPRET=1")
needs_csrc = pytest.mark.skipif(not csrc_available(), reason="needs the C++ extension lewm_fast._C")
FP32 = dict(rtol=2e-5, atol=2e-5)


def _problem(model, b=2, h=3, n=7, t=4, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    d, a = model.latent_dim, model.action_dim
    out = (torch.randn(b, h, d, generator=g), torch.randn(b, h - 1, a, generator=g), torch.randn(b, d, generator=g),
           torch.randn(b, n, t, a, generator=g))
    return tuple(x.to(device) for x in out)


def _reference_costs(model, ctx, hist, goal, cand):
    with torch.no_grad():
        return CEMSolver(model).costs(ctx, hist, goal, cand)


def _reference_rollout(model, ctx, hist, cand):
    b, n = cand.shape[:2]
    with torch.no_grad():
        return model.rollout(ctx.unsqueeze(1).expand(b, n, *ctx.shape[1:]), hist.unsqueeze(1).expand(b, n, *hist.shape[1:]), cand)


def _close_costs(got, want, **tol):
    scale = want.abs().max()
    torch.testing.assert_close(got / scale, want / scale, **(tol or FP32))


# ------------------------------------------------------------------------------------------------------ CPU paths
def _cpu_engines(model):
    engines = {"reference": RolloutEngine(model, backend="reference")}
    if csrc_available():
        engines["cpu"] = RolloutEngine(model, backend="cpu")
    fused_reference = RolloutEngine(model, backend="reference")
    fused_reference.fused = FusedRollout(model, PredictorOps())  # the fused schedule on the reference ops (fallback)
    engines["fused_reference"] = fused_reference
    return engines


@pytest.mark.parametrize("h,t", [(3, 5), (3, 1), (1, 3), (2, 4), (4, 2)])
def test_costs_and_rollout_match_reference_cpu(tiny_model, h, t):
    ctx, hist, goal, cand = _problem(tiny_model, h=h, t=t)
    want_costs = _reference_costs(tiny_model, ctx, hist, goal, cand)
    want_lat = _reference_rollout(tiny_model, ctx, hist, cand)
    for name, engine in _cpu_engines(tiny_model).items():
        costs = engine.costs(ctx, hist, goal, cand)
        assert costs.shape == (2, 7) and costs.dtype == torch.float32, name
        _close_costs(costs, want_costs)
        lat = engine.rollout(ctx, hist, cand)
        assert lat.shape == (2, 7, h + t, tiny_model.latent_dim), name
        torch.testing.assert_close(lat, want_lat, **FP32)
        assert torch.equal(lat[:, :, :h], ctx.unsqueeze(1).expand_as(lat[:, :, :h])), name


@needs_csrc
def test_auto_backend_on_cpu_is_the_cpp_path(tiny_model):
    assert RolloutEngine(tiny_model).backend == "cpu"
    assert RolloutEngine(tiny_model).fused.whole_window  # torch exports the BLAS gemm the C++ window blocks call
    assert RolloutEngine(tiny_model).fused.whole_step


def test_auto_without_kernel_libraries_is_the_fused_schedule_on_the_reference_ops(tiny_model, monkeypatch):
    monkeypatch.setattr("lewm_fast.backends.csrc_available", lambda: False)
    engine = RolloutEngine(tiny_model)
    assert engine.backend == "reference" and type(engine.fused.ops) is PredictorOps
    assert RolloutEngine(tiny_model, backend="reference").fused is None  # asked for: the model's own rollout


def test_torch_is_the_deprecated_name_of_the_reference_backend(tiny_model):
    with pytest.warns(DeprecationWarning, match="use 'reference'"):
        engine = RolloutEngine(tiny_model, backend="torch")
    assert engine.backend == "reference" and engine.fused is None
    assert type(make_ops("reference")) is PredictorOps


@needs_csrc
def test_cpu_path_without_the_window_blas_runs_op_by_op(tiny_model, monkeypatch):
    from lewm_fast.ops.predictor import CpuOps

    monkeypatch.setattr(CpuOps, "window_blocks_available", staticmethod(lambda: False))
    engine = RolloutEngine(tiny_model)
    assert engine.backend == "cpu" and not engine.fused.whole_window and not engine.fused.whole_step
    ctx, hist, goal, cand = _problem(tiny_model, h=3, t=4)
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(tiny_model, ctx, hist, goal, cand))


def test_predict_matches_reference(tiny_model):
    g = torch.Generator().manual_seed(3)
    emb, act = torch.randn(3, 3, 32, generator=g), torch.randn(3, 3, 32, generator=g)
    with torch.no_grad():
        want = tiny_model.predict(emb, act)
        for name, engine in _cpu_engines(tiny_model).items():
            torch.testing.assert_close(engine.predict(emb, act), want, **FP32)
            torch.testing.assert_close(engine.predict(emb[:, :2], act[:, :2]), tiny_model.predict(emb[:, :2], act[:, :2]), **FP32)


def test_unusual_structures_match_reference():
    """to_out = Identity (1 head of full width) and a pred_proj with LayerNorm (not foldable: run as a module)."""
    torch.manual_seed(1)
    model = build_model(tiny_config(heads=1, dim_head=32))
    model.pred_proj = MLP(32, 40, 32, norm_fn=nn.LayerNorm)
    randomize_(model, seed=1).eval()
    assert isinstance(model.predictor.transformer.layers[0].attn.to_out, nn.Identity)
    ctx, hist, goal, cand = _problem(model, t=3)
    want = _reference_costs(model, ctx, hist, goal, cand)
    for engine in _cpu_engines(model).values():
        _close_costs(engine.costs(ctx, hist, goal, cand), want)
        torch.testing.assert_close(engine.rollout(ctx, hist, cand), _reference_rollout(model, ctx, hist, cand), **FP32)


def test_engine_follows_weight_updates(tiny_model):
    ctx, hist, goal, cand = _problem(tiny_model, t=3)
    engine = RolloutEngine(tiny_model)
    before = engine.costs(ctx, hist, goal, cand)
    qkv_buffer = engine.fused.packed.blocks[0].qkv_w
    with torch.no_grad():
        tiny_model.predictor.transformer.layers[0].attn.norm.weight.mul_(1.5)  # folded into to_qkv
        tiny_model.pred_proj.net[1].running_var.add_(0.5)  # folded BatchNorm statistics
    after = engine.costs(ctx, hist, goal, cand)
    assert not torch.allclose(before, after)
    _close_costs(after, _reference_costs(tiny_model, ctx, hist, goal, cand))
    assert engine.fused.packed.blocks[0].qkv_w is qkv_buffer  # re-folded in place (captured graphs stay valid)
    fc2 = tiny_model.predictor.transformer.layers[1].mlp.net[4]
    fc2.weight = torch.nn.Parameter(fc2.weight.detach() * 0.5)  # a parameter replaced, not changed in place
    replaced = engine.costs(ctx, hist, goal, cand)
    assert not torch.allclose(after, replaced)
    _close_costs(replaced, _reference_costs(tiny_model, ctx, hist, goal, cand))


def _ops(kind):
    if kind == "triton" and not triton_available(torch.device("cpu")):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    return PredictorOps() if kind == "reference" else make_ops("triton")


@pytest.mark.parametrize("ops", ["reference", "triton"])
@pytest.mark.parametrize("cond_proj", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_action_conditioning_is_two_folded_linears(tiny_model, ops, cond_proj, dtype):
    """``condition_actions``: the Conv1d folded into the first Linear, ``cond_proj`` (Identity, or a Linear) into
    the second, each SiLU an epilogue; equal to ``silu(cond_proj(action_encoder(a)))`` of the modules (fp32 2e-5;
    a bf16 plan rounds the result once to bf16)."""
    if cond_proj:
        d = tiny_model.predictor.transformer.cond_proj
        tiny_model.predictor.transformer.cond_proj = proj = nn.Linear(32, 32)
        randomize_(proj, seed=4)
        assert isinstance(d, nn.Identity)
    fused = FusedRollout(tiny_model, _ops(ops), dtype)
    assert fused.packed.act_w1 is not None
    actions = torch.randn(5, 4, tiny_model.action_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = torch.nn.functional.silu(tiny_model.predictor.transformer.cond_proj(tiny_model.action_encoder(actions)))
        got = fused.condition_actions(actions)
    assert got.dtype == dtype and got.shape == want.shape
    tol = FP32 if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.float(), want, **tol)


def test_action_conditioning_of_another_structure_runs_the_modules(tiny_model):
    """An action encoder whose MLP is not Linear -> SiLU -> Linear is not folded: the modules run, costs unchanged."""
    tiny_model.action_encoder.embed[1] = nn.GELU()
    ctx, hist, goal, cand = _problem(tiny_model, t=3)
    engine = RolloutEngine(tiny_model, backend="reference")
    engine.fused = FusedRollout(tiny_model, PredictorOps())
    assert engine.fused.packed.act_w1 is None
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(tiny_model, ctx, hist, goal, cand))


def test_engine_follows_action_encoder_updates(tiny_model):
    """The folded action conditioning is re-folded when the action encoder's weights change."""
    ctx, hist, goal, cand = _problem(tiny_model, t=3)
    engine = RolloutEngine(tiny_model, backend="reference")
    engine.fused = FusedRollout(tiny_model, PredictorOps())
    before = engine.costs(ctx, hist, goal, cand)
    with torch.no_grad():
        tiny_model.action_encoder.patch_embed.weight.mul_(1.5)
    after = engine.costs(ctx, hist, goal, cand)
    assert not torch.allclose(before, after)
    _close_costs(after, _reference_costs(tiny_model, ctx, hist, goal, cand))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_prepared_context_is_reused(tiny_model, backend):
    engine = RolloutEngine(tiny_model, backend=backend)
    ctx, hist, goal, cand = _problem(tiny_model, t=4)
    context = engine.prepare(ctx, hist)
    assert (context is None) == (backend == "reference")
    want = _reference_costs(tiny_model, ctx, hist, goal, cand)
    engine.costs(ctx, hist, goal, torch.randn_like(cand), context=context)  # a first CEM iteration
    _close_costs(engine.costs(ctx, hist, goal, cand, context=context), want)  # the next one reuses the context
    torch.testing.assert_close(engine.rollout(ctx, hist, cand, context=context), _reference_rollout(tiny_model, ctx, hist, cand), **FP32)
    if context is None:
        return
    with torch.no_grad():
        tiny_model.predictor.pos_embedding.mul_(0.5)  # weights changed after prepare(): the context is recomputed
    _close_costs(engine.costs(ctx, hist, goal, cand, context=context), _reference_costs(tiny_model, ctx, hist, goal, cand))
    with pytest.raises(ValueError, match="prepared from other"):
        engine.costs(ctx.clone(), hist, goal, cand, context=context)
    ctx.add_(1.0)
    with pytest.raises(ValueError, match="modified in place"):
        engine.costs(ctx, hist, goal, cand, context=context)


# ---------------------------------------------------------------------------------------------------------- Triton
@needs_triton
@pytest.mark.parametrize("h,t", [(3, 3), (1, 2), (1, 5)])  # (1, 5): kept keys / values, then the window slides
def test_triton_costs_match_reference(tiny_model, h, t):
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, h=h, t=t, device=DEVICE)
    engine = RolloutEngine(model, backend="triton")
    assert engine.backend == "triton"
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(model, ctx, hist, goal, cand))
    torch.testing.assert_close(engine.rollout(ctx, hist, cand), _reference_rollout(model, ctx, hist, cand), **FP32)


@needs_triton
def test_triton_unusual_structures_match_reference():
    """to_out = Identity (the separate window-attention kernel and gated residual without a GEMM) and a pred_proj
    run as a module, on the Triton ops."""
    torch.manual_seed(1)
    model = build_model(tiny_config(heads=1, dim_head=32))
    model.pred_proj = MLP(32, 40, 32, norm_fn=nn.LayerNorm)
    model = randomize_(model, seed=1).eval().to(DEVICE)
    ctx, hist, goal, cand = _problem(model, t=3, device=DEVICE)
    engine = RolloutEngine(model, backend="triton")
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(model, ctx, hist, goal, cand))


@needs_triton
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_triton_tensor_core_precisions_within_tolerance(tiny_model, precision):
    """float32 with TF32 / 3xTF32 dots (on CUDA; the interpreter multiplies exact fp32): costs within TF32 rounding."""
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, t=3, device=DEVICE)
    engine = RolloutEngine(model, backend="triton", precision=precision)
    assert engine.precision == precision and engine.fused.ops.precision == precision
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(model, ctx, hist, goal, cand), rtol=1e-2, atol=1e-2)


def test_precision_needs_the_triton_backend(tiny_model):
    with pytest.raises(ValueError, match="needs the Triton backend"):
        RolloutEngine(tiny_model, backend="cpu", precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        RolloutEngine(tiny_model, backend="cpu", precision="fp16")


@needs_triton
def test_triton_bf16_within_tolerance(tiny_model):
    model = tiny_model.to(DEVICE)
    ctx, hist, goal, cand = _problem(model, t=3, device=DEVICE)
    engine = RolloutEngine(model, backend="triton", dtype=torch.bfloat16)
    _close_costs(engine.costs(ctx, hist, goal, cand), _reference_costs(model, ctx, hist, goal, cand), rtol=0.0, atol=3e-2)


@needs_triton
def test_triton_predict_matches_reference(tiny_model):
    model = tiny_model.to(DEVICE)
    g = torch.Generator().manual_seed(3)
    emb, act = torch.randn(3, 3, 32, generator=g).to(DEVICE), torch.randn(3, 3, 32, generator=g).to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(RolloutEngine(model, backend="triton").predict(emb, act), model.predict(emb, act), **FP32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_costs_capture_in_cuda_graph(tiny_model, dtype):
    model = tiny_model.cuda()
    ctx, hist, goal, cand = _problem(model, n=33, t=5, device="cuda")
    engine = RolloutEngine(model, dtype=dtype)
    static_cand = cand.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            engine.costs(ctx, hist, goal, static_cand)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_costs = engine.costs(ctx, hist, goal, static_cand)
    new = torch.randn_like(cand)
    static_cand.copy_(new)
    graph.replay()
    torch.testing.assert_close(static_costs, engine.costs(ctx, hist, goal, new), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ accelerate
def test_accelerate_shares_weights_and_matches(tiny_model):
    fast = accelerate(tiny_model)
    assert isinstance(fast, AcceleratedLeWM)
    ref_sd, fast_sd = tiny_model.state_dict(), fast.state_dict()
    assert list(ref_sd) == list(fast_sd)
    assert all(ref_sd[k].data_ptr() == fast_sd[k].data_ptr() for k in ref_sd)
    ctx, hist, _, cand = _problem(tiny_model, t=3)
    b, n = cand.shape[:2]
    per_sample_ctx = ctx.unsqueeze(1).expand(b, n, *ctx.shape[1:]) + 0.1 * torch.randn(b, n, *ctx.shape[1:])
    per_sample_hist = hist.unsqueeze(1).expand(b, n, *hist.shape[1:]).contiguous()
    with torch.no_grad():
        want = tiny_model.rollout(per_sample_ctx, per_sample_hist, cand)
        torch.testing.assert_close(fast.rollout(per_sample_ctx, per_sample_hist, cand), want, **FP32)
        emb, act = per_sample_ctx[0], tiny_model.action_encoder(torch.cat([per_sample_hist[0], cand[0, :, :1]], 1))
        torch.testing.assert_close(fast.predict(emb, act), tiny_model.predict(emb, act), **FP32)
    assert fast._fast() is False  # grad enabled and parameters require grad: the reference path (autograd works)
    emb.requires_grad_(True)
    fast.predict(emb, act.detach()).sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_accelerate_duck_typed_foreign_module(tiny_model):
    class ForeignLeWM(nn.Module):  # e.g. stable-worldmodel's LeWM: same submodules, another class
        def __init__(self, m):
            super().__init__()
            self.encoder, self.predictor, self.action_encoder = m.encoder, m.predictor, m.action_encoder
            self.projector, self.pred_proj = m.projector, m.pred_proj

    foreign = ForeignLeWM(tiny_model).eval()
    fast = accelerate(foreign)
    assert list(fast.state_dict()) == list(foreign.state_dict())
    ctx, hist, goal, cand = _problem(tiny_model, t=3)
    _close_costs(fast.engine.costs(ctx, hist, goal, cand), _reference_costs(tiny_model, ctx, hist, goal, cand))
    with pytest.raises(TypeError, match="lacks"):
        accelerate(nn.Linear(2, 2))


def test_accelerate_training_mode_uses_reference(tiny_model):
    fast = accelerate(tiny_model).train()
    assert fast._fast() is False
    with torch.no_grad():
        assert fast._fast() is False
        fast.eval()
        assert fast._fast() is True


# ------------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_clear_errors(tiny_model):
    engine = RolloutEngine(tiny_model)
    ctx, hist, goal, cand = _problem(tiny_model)
    with pytest.raises(ValueError, match="action_history must have shape"):
        engine.costs(ctx, hist[:, :1], goal, cand)
    with pytest.raises(ValueError, match="last dimension 10"):
        engine.costs(ctx, hist, goal, cand[..., :3])
    with pytest.raises(ValueError, match="B=2"):
        engine.costs(ctx, hist, goal, cand[:1])
    with pytest.raises(ValueError, match="goal_emb must have shape"):
        engine.costs(ctx, hist, goal[:1], cand)
    with pytest.raises(ValueError, match="emb_ctx must have 3 dimensions"):
        engine.rollout(ctx[0], hist, cand)
    with pytest.raises(TypeError, match="floating dtype"):
        engine.costs(ctx, hist, goal, cand.long())
    with pytest.raises(ValueError, match="at most 3"):
        engine.predict(torch.zeros(1, 4, 32), torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="backend must be one of"):
        RolloutEngine(tiny_model, backend="cuda")
    with pytest.raises(ValueError, match="dtype must be"):
        RolloutEngine(tiny_model, dtype=torch.float16)
    with pytest.raises(TypeError, match="'predictor' submodule"):
        RolloutEngine(nn.Linear(2, 2))
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="bfloat16 needs the Triton backend"):
            RolloutEngine(tiny_model, backend="reference", dtype=torch.bfloat16)


def test_training_mode_warns(tiny_model):
    tiny_model.train()
    with pytest.warns(UserWarning, match="model.eval"):
        RolloutEngine(tiny_model)
    tiny_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RolloutEngine(tiny_model)
