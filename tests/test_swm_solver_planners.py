"""lewm_fast.planning's versions of stable-worldmodel's gradient and predictive-sampling solvers (GradientPlanner,
LagrangianPlanner, PredictiveSamplingPlanner) against the stand-ins of its solvers (tests/swm_solver_standins.py) on
the same LeWM, and their lewm-eval presets."""

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lewm_fast import build_model
from lewm_fast.backends import triton_available
from lewm_fast.data import ActionCodec
from lewm_fast.evaluation.planners import PlannerInputs, build_planner, validate_planner_config
from lewm_fast.planning.gradient import GradientPlanner
from lewm_fast.planning.lagrangian import LagrangianPlanner, box_constraints
from lewm_fast.planning.predictive_sampling import PredictiveSamplingPlanner

import swm_solver_standins as swm
import swm_standins
from conftest import randomize_, tiny_config

ENV_A, BLOCK = 2, 5
PRESETS = Path(__file__).resolve().parents[1] / "lewm_fast" / "configs" / "eval" / "planner"


@pytest.fixture(scope="module")
def models():
    """(lewm_fast LeWM, stable-worldmodel stand-in LeWM) with the same random weights."""
    torch.manual_seed(0)
    ours = randomize_(build_model(tiny_config())).eval()
    standin = swm.CostableLeWM(*[getattr(swm_standins.build_standin(build_model(tiny_config()).encoder), name) for name in
                                 ("encoder", "predictor", "action_encoder", "projector", "pred_proj")])
    standin.load_state_dict(ours.state_dict())
    return ours, standin.eval()


class ConstrainedLeWM(swm.CostableLeWM):
    """Its LeWM plus get_constraints: every action value within +-0.3 (the box constraints of LagrangianPlanner)."""

    def get_constraints(self, info, candidates):
        return torch.cat([(candidates - 0.3).amax(dim=2), (-0.3 - candidates).amax(dim=2)], dim=-1)


def _problem(ours, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels, goal = torch.randn(1, 1, 3, 28, 28, generator=g), torch.randn(1, 1, 3, 28, 28, generator=g)
    info = {"pixels": pixels, "goal": goal, "action": torch.zeros(1, 1, ENV_A * BLOCK)}
    return info, pixels, goal[:, 0]


def _configured(solver):
    solver.configure(action_space=swm.BoxSpace((1, ENV_A)), n_envs=1,
                     config=swm.PlanConfig(horizon=4, receding_horizon=4, action_block=BLOCK))
    return solver


@pytest.mark.parametrize("backend, kwargs", [
    ("reference", {}),
    ("reference", {"optimizer_cls": torch.optim.Adam, "optimizer_kwargs": {"lr": 0.05}, "grad_clip": 1.0,
                   "action_noise": 0.05}),
    ("cpu", {"optimizer_cls": torch.optim.Adam, "optimizer_kwargs": {"lr": 0.05}}),  # the C++ rollout's backward
])
def test_gradient_planner_equals_stable_worldmodel_gradient_solver(models, backend, kwargs):
    ours, theirs = models
    info, pixels, goal = _problem(ours)
    planner = GradientPlanner(ours, num_samples=6, n_steps=4, horizon=4, receding_horizon=4, backend=backend, seed=3,
                              **kwargs)
    plan, diag = planner.plan(pixels, goal, return_diagnostics=True)
    want = _configured(swm.GradientSolver(theirs, n_steps=4, num_samples=6, seed=3, **kwargs)).solve(info)
    torch.testing.assert_close(plan, want["actions"], rtol=1e-4, atol=1e-4)
    assert len(diag.elite_costs) == 4 and diag.elite_costs[0].shape == (1, 1)
    # the summed costs it records per step are our per-step costs before each update
    assert diag.elite_costs[-1].item() <= want["cost"][0][-1] + 1e-4


def test_lagrangian_planner_equals_stable_worldmodel_lagrangian_solver(models):
    ours, theirs = models
    constrained = ConstrainedLeWM(*[getattr(theirs, n) for n in ("encoder", "predictor", "action_encoder", "projector",
                                                                  "pred_proj")]).eval()
    info, pixels, goal = _problem(ours, seed=1)
    low, high = torch.full((ENV_A * BLOCK,), -0.3), torch.full((ENV_A * BLOCK,), 0.3)
    settings = dict(n_steps=3, n_outer_steps=3, num_samples=4, seed=2, optimizer_kwargs={"lr": 0.1})
    planner = LagrangianPlanner(ours, horizon=4, receding_horizon=4, backend="reference",
                                constraints=box_constraints(low, high), **settings)
    plan = planner.plan(pixels, goal)
    want = _configured(swm.LagrangianSolver(constrained, **settings)).solve(info)
    torch.testing.assert_close(plan, want["actions"], rtol=1e-4, atol=1e-4)
    assert planner.n_steps == 9 and planner.inner_steps == 3


def test_predictive_sampling_planner_equals_stable_worldmodel_and_warm_starts(models):
    ours, theirs = models
    info, pixels, goal = _problem(ours, seed=2)
    planner = PredictiveSamplingPlanner(ours, num_samples=16, horizon=4, receding_horizon=2, noise_scale=0.5,
                                        backend="reference", seed=4)
    init = torch.randn(1, 4, ENV_A * BLOCK)
    plan = planner.plan(pixels, goal, init_mean=init)
    want = _configured(swm.PredictiveSamplingSolver(theirs, num_samples=16, noise_scale=0.5, seed=4)).solve(info,
                                                                                                           init.clone())
    torch.testing.assert_close(plan, want["actions"], rtol=1e-4, atol=1e-4)
    first = planner.act(pixels, goal)
    assert first.shape == (1, 2, ENV_A * BLOCK)


def test_gradient_planner_act_is_reproducible_after_reseed(models):
    ours, _ = models
    _, pixels, goal = _problem(ours)
    planner = GradientPlanner(ours, num_samples=4, n_steps=2, horizon=3, receding_horizon=1, backend="reference", seed=0)
    runs = []
    for _ in range(2):
        planner.reseed(11)
        planner.reset()
        runs.append(torch.cat([planner.act(pixels, goal), planner.act(pixels, goal)], dim=1))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_gradient_planner_clip_bounds_keep_every_step_inside(models):
    ours, _ = models
    _, pixels, goal = _problem(ours)
    bounds = (torch.full((ENV_A * BLOCK,), -0.2), torch.full((ENV_A * BLOCK,), 0.2))
    planner = GradientPlanner(ours, num_samples=4, n_steps=3, horizon=3, receding_horizon=3, backend="reference", seed=0,
                              optimizer_kwargs={"lr": 5.0}, action_bounds=bounds)
    plan, diag = planner.plan(pixels, goal, return_diagnostics=True)
    assert plan.abs().max() <= 0.2 + 1e-6 and all(m.abs().max() <= 0.2 + 1e-6 for m in diag.mean)


@pytest.mark.parametrize("name, cls", [("gd", GradientPlanner), ("lagrangian", LagrangianPlanner),
                                       ("predictive_sampling", PredictiveSamplingPlanner)])
def test_lewm_eval_presets_build_the_planners(models, name, cls):
    ours, _ = models
    cfg = OmegaConf.create({"seed": 3, "planner": OmegaConf.load(PRESETS / f"{name}.yaml")})
    cfg.planner.backend = "reference"
    validate_planner_config(cfg)
    codec = ActionCodec(np.zeros(ENV_A), np.ones(ENV_A), BLOCK, ENV_A)
    inputs = PlannerInputs(Path("."), codec, -np.ones(ENV_A), np.ones(ENV_A))
    planner = build_planner(ours, cfg, inputs)
    assert type(planner) is cls and planner.horizon == 5
    if name == "lagrangian":
        assert planner.constraints is not None and planner.bounds is None
    else:
        assert planner.bounds is not None  # the presets clip to the env box, as lewm-eval's CEM
    cfg.planner.backend = "reference"
    for key, bad, match in [("optimizer", "Nope", "torch.optim"), ("lr", 0, "planner.lr"),
                            ("num_samples", 0, "planner.num_samples")]:
        if key in cfg.planner:
            broken = cfg.copy()
            broken.planner[key] = bad
            with pytest.raises(ValueError, match=match):
                validate_planner_config(broken)


def test_gradient_planner_descends_through_the_triton_rollout_as_through_the_reference(models):
    """The fused Triton rollout's backward (interpreter, float32) gives the reference's descent: one sample, the warm
    start, so no noise stream is involved (Triton draws Philox, the reference torch.randn)."""
    if not triton_available(torch.device("cpu")):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    ours, _ = models
    _, pixels, goal = _problem(ours)
    plans = [GradientPlanner(ours, num_samples=1, n_steps=2, horizon=2, receding_horizon=2, backend=backend, seed=0,
                             dtype=torch.float32, optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.1})
             .plan(pixels, goal) for backend in ("reference", "triton")]
    torch.testing.assert_close(plans[1], plans[0], rtol=1e-4, atol=1e-5)
    assert not torch.equal(plans[0], torch.zeros_like(plans[0]))  # it moved
