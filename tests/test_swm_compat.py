"""lewm_fast's fast paths on a genuine stable-worldmodel LeWM object (stand-ins of its classes, tests/swm_standins.py,
not lewm_fast's own modules): ``accelerate``, ``RolloutEngine`` and the planners read the head split from the weights
(stable-worldmodel's ``Attention`` has no ``dim_head``) and match lewm_fast's reference on the same weights."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import pytest
import torch

from lewm_fast import CEMPlanner, RolloutEngine, accelerate, build_model
from lewm_fast.backends import triton_available

import swm_standins
from conftest import randomize_, tiny_config

FP32 = dict(rtol=1e-5, atol=1e-5)
needs_triton = pytest.mark.skipif(not triton_available(torch.device("cpu")), reason="needs triton (interpreter)")


@pytest.fixture(scope="module")
def pair():
    """(stable-worldmodel stand-in LeWM, lewm_fast LeWM) holding the same random weights."""
    torch.manual_seed(0)
    ours = randomize_(build_model(tiny_config())).eval()
    swm = swm_standins.build_standin(build_model(tiny_config()).encoder)
    swm.load_state_dict(ours.state_dict())  # the same keys and shapes, strictly
    return swm.eval(), ours


def _problem(model, b=2, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    d, a = model.latent_dim, model.action_dim
    return (torch.randn(b, 3, d, generator=g), torch.randn(b, 2, a, generator=g), torch.randn(b, d, generator=g),
            torch.randn(b, n, 3, a, generator=g))


def test_standin_is_a_faithful_stable_worldmodel_tree(pair):
    swm, ours = pair
    assert type(swm).__module__ == swm_standins.__name__ and not hasattr(swm.predictor.transformer.layers[0].attn, "dim_head")
    assert list(swm.state_dict()) == list(ours.state_dict())
    emb, _, _, cand = _problem(ours)
    act = ours.action_encoder(cand[:, 0])
    with torch.no_grad():  # same weights, same predictions: the stand-in computes what stable-worldmodel computes
        torch.testing.assert_close(swm.predict(emb, act), ours.predict(emb, act), **FP32)
        info = swm.encode({"pixels": torch.randn(2, 1, 3, 28, 28, generator=torch.Generator().manual_seed(2))})
        torch.testing.assert_close(info["emb"], ours.encode(torch.randn(2, 1, 3, 28, 28, generator=torch.Generator().manual_seed(2))), **FP32)


def test_accelerate_on_a_stable_worldmodel_model(pair):
    swm, ours = pair
    fast = accelerate(swm)
    assert list(fast.state_dict()) == list(swm.state_dict())
    emb, hist, _, cand = _problem(ours)
    b, n = cand.shape[:2]
    ctx_n, hist_n = emb.unsqueeze(1).expand(b, n, *emb.shape[1:]), hist.unsqueeze(1).expand(b, n, *hist.shape[1:])
    act = ours.action_encoder(cand[:, 0])
    with torch.no_grad():
        torch.testing.assert_close(fast.predict(emb, act), ours.predict(emb, act), **FP32)
        torch.testing.assert_close(fast.rollout(ctx_n, hist_n, cand), ours.rollout(ctx_n, hist_n, cand), **FP32)
    assert fast.engine.fused.packed.heads == 4 and fast.engine.fused.packed.dim_head == 8


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=needs_triton)])
def test_rollout_engine_on_a_stable_worldmodel_model(pair, backend):
    swm, ours = pair
    emb, hist, goal, cand = _problem(ours)
    want = RolloutEngine(ours, backend="reference")
    got = RolloutEngine(swm, backend=backend)
    torch.testing.assert_close(got.costs(emb, hist, goal, cand), want.costs(emb, hist, goal, cand), **FP32)
    torch.testing.assert_close(got.rollout(emb, hist, cand), want.rollout(emb, hist, cand), **FP32)


def test_planner_on_an_accelerated_stable_worldmodel_model(pair):
    swm, ours = pair
    emb, _, goal, _ = _problem(ours)
    kw = dict(num_samples=16, topk=4, n_steps=3, horizon=3, receding_horizon=2, seed=0)
    got = CEMPlanner(accelerate(swm), **kw).plan(emb, goal, latent=True)
    torch.testing.assert_close(got, CEMPlanner(ours, **kw).plan(emb, goal, latent=True), **FP32)


def test_a_predictor_without_a_head_count_fails_with_the_real_reason(pair):
    swm, _ = pair
    broken = swm_standins.build_standin(swm.encoder).eval()
    del broken.predictor.transformer.layers[0].attn.heads
    with pytest.raises(TypeError, match="must have an int attribute 'heads'"):
        RolloutEngine(broken)
    fast = accelerate(broken)
    emb = torch.randn(1, 3, 32)
    with torch.no_grad(), pytest.raises(TypeError, match="must have an int attribute 'heads'"):  # not "no 'engine'"
        fast.predict(emb, emb)
    broken.predictor.transformer.layers[0].attn.heads = 4
    del broken.predictor.transformer.layers[0].mlp  # an AttributeError inside the engine: named, not masked
    with torch.no_grad(), pytest.raises(TypeError, match="cannot build the fused engine for this model: .*mlp"):
        accelerate(broken).predict(emb, emb)
