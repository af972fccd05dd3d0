"""Every public fast op and planner works under ``torch.no_grad()``, ``torch.inference_mode()`` and plain mode, and
a planner or engine keeps working when the caller switches modes between calls (stable-worldmodel's solvers run
under inference_mode; training code and notebooks often do not). Results equal those of plain mode exactly."""

import contextlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import pytest
import torch

from lewm_fast import CEMPlanner, ICEMPlanner, MPPIPlanner, RolloutEngine, SIGReg, accelerate
from lewm_fast.backends import triton_available
from lewm_fast.ops import elite_refit

MODES = {"plain": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
needs_triton = pytest.mark.skipif(not triton_available(torch.device("cpu")), reason="needs triton (interpreter)")
ENGINE_BACKENDS = ["cpu", "reference", pytest.param("triton", marks=needs_triton)]
SMALL = dict(num_samples=12, topk=3, n_steps=2, horizon=3, receding_horizon=2, seed=0)


def _inputs(model, b=2, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, a = model.latent_dim, model.action_dim
    return (torch.randn(b, 3, d, generator=g), torch.randn(b, 2, a, generator=g), torch.randn(b, d, generator=g),
            torch.randn(b, n, 3, a, generator=g))


def _engine_outputs(engine, emb, hist, goal, cand):
    context = engine.prepare(emb, hist)
    return (engine.costs(emb, hist, goal, cand), engine.costs(emb, hist, goal, cand, context=context),
            engine.rollout(emb, hist, cand), engine.predict(emb, emb))


@pytest.mark.parametrize("backend", ENGINE_BACKENDS)
def test_rollout_engine_in_every_mode_and_across_modes(tiny_model, backend):
    engine = RolloutEngine(tiny_model, backend=backend)
    want = _engine_outputs(RolloutEngine(tiny_model, backend=backend), *_inputs(tiny_model))
    for mode in ("inference_mode", "plain", "no_grad", "inference_mode"):  # one engine, modes switched between calls
        with MODES[mode]():
            got = _engine_outputs(engine, *_inputs(tiny_model))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_accelerated_model_in_every_mode(tiny_model, mode):
    emb, hist, _, cand = _inputs(tiny_model)
    b, n = cand.shape[:2]
    ctx, hist_n = emb.unsqueeze(1).expand(b, n, *emb.shape[1:]), hist.unsqueeze(1).expand(b, n, *hist.shape[1:])
    fast = accelerate(tiny_model)
    with torch.no_grad():
        want_rollout, want_predict = fast.rollout(ctx, hist_n, cand), fast.predict(emb, emb)
    with MODES[mode]():
        fresh = accelerate(tiny_model)
        got = (fresh.rollout(ctx, hist_n, cand), fresh.predict(emb, emb))
    # plain mode with parameters that require grad: the reference (differentiable) path, equal to fp32 rounding
    tol = dict(rtol=1e-5, atol=1e-5) if mode == "plain" else dict(rtol=0, atol=0)
    torch.testing.assert_close(got[0], want_rollout, **tol)
    torch.testing.assert_close(got[1], want_predict, **tol)


def _mpc(planner, modes, emb, goal):
    plans = []
    for mode in modes:
        with MODES[mode]():
            plans.append(planner.act(emb, goal, latent=True))
    with MODES[modes[-1]]():
        plans.append(planner.plan(emb, goal, latent=True))
        planner.reset(torch.tensor([True, False]))  # updates the kept warm start in place
        plans.append(planner.act(emb, goal, latent=True))
    return plans


@pytest.mark.parametrize("cls, backend", [(CEMPlanner, "cpu"), (MPPIPlanner, "cpu"), (ICEMPlanner, "cpu"),
                                          pytest.param(CEMPlanner, "triton", marks=needs_triton)])
def test_planner_made_in_one_mode_plans_in_every_other(tiny_model, cls, backend):
    emb, _, goal, _ = _inputs(tiny_model)
    want = _mpc(cls(tiny_model, backend=backend, **SMALL), ["plain", "plain", "plain"], emb, goal)
    with torch.inference_mode():
        planner = cls(tiny_model, backend=backend, **SMALL)  # its noise key and buffers are born in inference mode
    got = _mpc(planner, ["inference_mode", "plain", "no_grad"], emb, goal)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=needs_triton)])
def test_sigreg_and_elite_refit_ops_in_every_mode(mode, backend):
    g = torch.Generator().manual_seed(0)
    z, A = torch.randn(2, 16, 8, generator=g), torch.randn(8, 12, generator=g)
    cand, costs = torch.randn(2, 10, 3, 2, generator=g), torch.randn(2, 10, generator=g)
    want = (SIGReg(num_proj=12, backend=backend)(z, A), elite_refit(cand, costs, 4, backend=backend))
    with MODES[mode]():
        got = (SIGReg(num_proj=12, backend=backend)(z, A), elite_refit(cand, costs, 4, backend=backend))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
