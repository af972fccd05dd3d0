"""Action bounds of the sampling planners (``action_bounds=``, ``bounds_mode``; lewm_fast.planning.bounds), lewm-eval's
``planner.action_bounds`` and the ONNX planner graph's bounds.

Clip mode keeps every candidate the rollout sees and every returned plan inside the bounds on each backend here (cpu,
reference, triton under TRITON_INTERPRET=1); penalty mode adds ``weight * sum excess^2`` to the costs; no bounds, clip
with infinite bounds and a zero-weight penalty all plan bit for bit as the planners without the option.
"""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import numpy as np
import pytest
import torch

from lewm_fast import build_model
from lewm_fast.backends import triton_available
from lewm_fast.cli.evaluate import main as eval_main
from lewm_fast.data import ActionCodec
from lewm_fast.io import NORMALIZATION
from lewm_fast.planning import CEMPlanner, ICEMPlanner, MPPIPlanner, RolloutEngine
from lewm_fast.planning.bounds import ActionBounds, normalized_box
from lewm_fast.reference.cem import CEMSolver

from conftest import tiny_config

SMALL = dict(num_samples=32, topk=6, n_steps=4, horizon=3, receding_horizon=2)
PLANNERS = [CEMPlanner, MPPIPlanner, ICEMPlanner]
BACKENDS = ["cpu", "reference", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_available(torch.device("cpu")), reason="needs triton with TRITON_INTERPRET=1"))]


def _problem(model, b=2, h=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, model.latent_dim, generator=g), torch.randn(b, model.latent_dim, generator=g)


def _bounds(a):
    """Narrow asymmetric bounds: unit-variance samples leave them often."""
    low = torch.linspace(-0.4, -0.1, a)
    return low, low + torch.linspace(0.3, 0.9, a)


class Recording:
    """A rollout engine that remembers the candidates it was asked to cost, and their costs."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    def prepare(self, emb_ctx, action_history):
        return self.engine.prepare(emb_ctx, action_history)

    def costs(self, emb_ctx, action_history, goal_emb, candidates, context=None):
        costs = self.engine.costs(emb_ctx, action_history, goal_emb, candidates, context=context)
        self.seen.append((candidates.clone(), costs.clone()))
        return costs


def _planner(cls, model, backend, **kwargs):
    engine = Recording(RolloutEngine(model, backend="reference" if backend == "triton" else backend))
    return cls(model, backend=backend, engine=engine, seed=3, **SMALL, **kwargs), engine


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", PLANNERS)
def test_clip_keeps_candidates_and_plans_in_bounds(tiny_model, cls, backend):
    low, high = _bounds(tiny_model.action_dim)
    planner, engine = _planner(cls, tiny_model, backend, action_bounds=(low, high))
    ctx, goal = _problem(tiny_model)
    plans = [planner.plan(ctx, goal, latent=True), planner.act(ctx, goal, latent=True),
             planner.act(ctx, goal, latent=True)]  # the second act() starts from a warm start (iCEM: kept elites)
    assert len(engine.seen) == 3 * SMALL["n_steps"]
    for cand, _ in engine.seen:
        assert bool(((cand >= low) & (cand <= high)).all())
    assert any(bool((cand == high).any()) for cand, _ in engine.seen)  # samples did leave the bounds and were clipped
    for plan in plans:
        assert bool(((plan >= low) & (plan <= high)).all())


@pytest.mark.parametrize("cls", PLANNERS)
def test_penalty_adds_the_documented_penalty(tiny_model, cls):
    low, high = _bounds(tiny_model.action_dim)
    planner, engine = _planner(cls, tiny_model, "cpu", action_bounds=(low, high), bounds_mode="penalty",
                               bounds_weight=2.5)
    ctx, goal = _problem(tiny_model)
    _, diag = planner.plan(ctx, goal, latent=True, return_diagnostics=True)
    for i, (cand, costs) in enumerate(engine.seen):
        excess = (cand - high).clamp_min(0) + (low - cand).clamp_min(0)
        want = costs + 2.5 * excess.square().sum((2, 3))
        torch.testing.assert_close(diag.elite_costs[i], want.sort(1).values[:, : SMALL["topk"]])
    assert bool((engine.seen[-1][0] > high).any())  # penalty mode does not clip
    cand = torch.randn(2, 5, SMALL["horizon"], tiny_model.action_dim)
    hist = torch.zeros(2, 0, tiny_model.action_dim)
    excess = torch.relu(cand - high) + torch.relu(low - cand)
    torch.testing.assert_close(planner.costs(ctx, hist, goal, cand),
                               engine.engine.costs(ctx, hist, goal, cand) + 2.5 * excess.square().sum((2, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", PLANNERS)
def test_no_bounds_plan_bit_for_bit_as_before(tiny_model, cls, backend):
    ctx, goal = _problem(tiny_model)
    a = tiny_model.action_dim
    inf = (torch.full((a,), -float("inf")), torch.full((a,), float("inf")))
    plans = []
    for kwargs in ({}, dict(action_bounds=None), dict(action_bounds=inf),
                   dict(action_bounds=_bounds(a), bounds_mode="penalty", bounds_weight=0.0)):
        planner, _ = _planner(cls, tiny_model, backend, **kwargs)
        plans.append(torch.cat([planner.plan(ctx, goal, latent=True), planner.act(ctx, goal, latent=True)], 1))
    for plan in plans[1:]:
        assert torch.equal(plan, plans[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["clip", "penalty"])
@pytest.mark.parametrize("cls", PLANNERS)
def test_cuda_graph_with_bounds_equals_eager(tiny_model, cls, mode):
    model = tiny_model.cuda()
    ctx, goal = (t.cuda() for t in _problem(model))
    low, high = (t.cuda() for t in _bounds(model.action_dim))
    kwargs = dict(seed=0, action_bounds=(low, high), bounds_mode=mode, dtype=torch.float32, **SMALL)
    eager, graphed = cls(model, cuda_graph=False, **kwargs), cls(model, **kwargs)
    assert graphed.captures
    for _ in range(3):  # capture, then replays
        plan = graphed.act(ctx, goal, latent=True)
        torch.testing.assert_close(plan, eager.act(ctx, goal, latent=True), rtol=1e-5, atol=1e-5)
        if mode == "clip":
            assert bool(((plan >= low) & (plan <= high)).all())


def test_no_bounds_still_matches_the_reference_bitwise(tiny_model):
    ctx, goal = _problem(tiny_model, h=3)
    settings = dict(**SMALL, seed=4)
    want = CEMSolver(tiny_model, **settings).plan(ctx, goal, latent=True)
    got = CEMPlanner(tiny_model, backend="reference", action_bounds=None, **settings).plan(ctx, goal, latent=True)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bounds,kwargs,message", [
    (([0.0] * 3, [1.0] * 10), {}, "must have 10 values each .* got 3 and 10"),
    (([0.0] * 10, [1.0] * 10, [2.0] * 10), {}, "must be a pair"),
    ("clip", {}, "must be a pair"),
    (([0.5] * 10, [0.0] * 10), {}, r"low must be <= high, not so at entries \[0, 1"),
    (([float("nan")] * 10, [1.0] * 10), {}, "must not contain NaN"),
    ((["a"] * 10, [1.0] * 10), {}, "must be a pair .* of numbers"),
    (([0.0] * 10, [1.0] * 10), dict(bounds_mode="clamp"), "bounds_mode must be one of"),
    (None, dict(bounds_mode="clamp"), "bounds_mode must be one of"),
    (([0.0] * 10, [1.0] * 10), dict(bounds_mode="penalty", bounds_weight=-1.0), "bounds_weight must be >= 0"),
])
@pytest.mark.parametrize("cls", PLANNERS)
def test_bad_bounds_raise_one_clear_error(tiny_model, cls, bounds, kwargs, message):
    assert tiny_model.action_dim == 10
    with pytest.raises(ValueError, match=message) as info:
        cls(tiny_model, action_bounds=bounds, **kwargs)
    assert "\n" not in str(info.value)


def test_normalized_box_maps_the_env_box_per_block_entry():
    codec = ActionCodec([0.05, -0.02], [0.6, 0.5], frameskip=3, action_dim=2)
    low, high = normalized_box(codec, [-1.0, -2.0], [1.0, 0.5])
    np.testing.assert_allclose(low, np.tile([(-1 - 0.05) / 0.6, (-2 + 0.02) / 0.5], 3))
    np.testing.assert_allclose(high, np.tile([(1 - 0.05) / 0.6, (0.5 + 0.02) / 0.5], 3))
    want = torch.tensor([1.0, 0.5] * 3, dtype=torch.float64)
    torch.testing.assert_close(codec.denormalize(torch.from_numpy(high)), want)
    with pytest.raises(ValueError, match="2 entries per side"):
        normalized_box(codec, [-1.0], [1.0])


def test_bounds_describe_is_json_ready():
    b = ActionBounds(([-1.0, 0.0], [1.0, 0.5]), 2, torch.device("cpu"), "penalty", 3.0)
    assert json.loads(json.dumps(b.describe())) == {"low": [-1.0, 0.0], "high": [1.0, 0.5], "mode": "penalty",
                                                    "weight": 3.0}


# ---------------------------------------------------------------------------------------------------- lewm-eval
ACTION_MEAN, ACTION_STD = [0.05, -0.02], [0.6, 0.5]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_config(image_size=28, patch_size=14)).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "step_00000010"
    model.save_pretrained(folder)
    norm = {"env": "two_room", "frameskip": 5, "action": {"mean": ACTION_MEAN, "std": ACTION_STD}}
    (folder / NORMALIZATION).write_text(json.dumps(norm))
    return folder


@pytest.mark.parametrize("mode", ["clip", "penalty", "none"])
def test_eval_maps_the_env_box_into_the_planner_bounds(checkpoint, mode):
    from lewm_fast.config import compose_config
    from lewm_fast.evaluation.runner import Evaluation

    cfg = compose_config("eval", [f"checkpoint={checkpoint}", "goals=expert", f"planner.action_bounds={mode}",
                                  "planner.bounds_weight=4"])
    planner = Evaluation(cfg).planner
    if mode == "none":
        assert planner.bounds is None
        return
    want_low = np.tile((-1 - np.array(ACTION_MEAN)) / ACTION_STD, 5)
    want_high = np.tile((1 - np.array(ACTION_MEAN)) / ACTION_STD, 5)
    np.testing.assert_allclose(planner.bounds.low.numpy(), want_low, rtol=1e-6)
    np.testing.assert_allclose(planner.bounds.high.numpy(), want_high, rtol=1e-6)
    assert planner.bounds.mode == mode and planner.bounds.weight == 4.0


def test_eval_defaults_to_no_bounds(checkpoint):
    from lewm_fast.config import compose_config
    from lewm_fast.evaluation.runner import Evaluation

    cfg = compose_config("eval", [f"checkpoint={checkpoint}", "goals=expert"])
    assert Evaluation(cfg).planner.bounds is None


@pytest.mark.parametrize("args,message", [
    (["planner.action_bounds=clamp"], r"planner.action_bounds must be one of \['clip', 'penalty', 'none'\]"),
    (["planner.bounds_weight=-1"], "planner.bounds_weight must be a number >= 0"),
    (["planner.bounds_weight=heavy"], "planner.bounds_weight must be a number"),
])
def test_eval_bad_bounds_end_in_one_error_line(checkpoint, args, message, capsys):
    assert eval_main([f"checkpoint={checkpoint}", "goals=expert", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lewm-eval: error: ") and err.count("\n") == 1 and re.search(message, err), err
