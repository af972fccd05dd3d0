"""lewm_fast.integrations.stable_worldmodel as a drop-in for every stable-worldmodel 0.1.1 solver and every model: any
Costable runs its algorithm (checked draw for draw against the stand-ins of tests/swm_solver_standins.py, which follow
its code), a LeWM runs it on the fused engine's costs (gradient solvers through its backward), and the protocol,
attributes, callbacks and warnings behave as its solvers'."""

import inspect
import logging

import pytest
import torch

from lewm_fast import build_model
from lewm_fast.integrations.stable_worldmodel import (CategoricalCEMSolver, CEMSolver, GradientSolver, ICEMSolver,
                                                      LagrangianSolver, MPPISolver, PGDSolver, PredictiveSamplingSolver)
from lewm_fast.integrations.stable_worldmodel.callbacks import (ActionNormRecorder, BestCostRecorder,
                                                                EliteCostRecorder, GradNormRecorder, MeanShiftRecorder)
from lewm_fast.planning.pgd import project_simplex

import swm_solver_standins as swm
import swm_standins
from conftest import randomize_, tiny_config

ENV_A, BLOCK = 2, 5  # the tiny model takes 10-wide action blocks
ALL = [CEMSolver, MPPISolver, ICEMSolver, PredictiveSamplingSolver, CategoricalCEMSolver, GradientSolver,
       LagrangianSolver, PGDSolver]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    ours = randomize_(build_model(tiny_config())).eval()
    standin = swm.CostableLeWM(*[getattr(swm_standins.build_standin(build_model(tiny_config()).encoder), name) for name in
                                 ("encoder", "predictor", "action_encoder", "projector", "pred_proj")])
    standin.load_state_dict(ours.state_dict())
    return standin.eval()


def _configure(solver, b=2, a=3, horizon=4, block=1, space=None):
    solver.configure(action_space=space or swm.BoxSpace((b, a), bound=0.8), n_envs=b,
                     config=swm.PlanConfig(horizon=horizon, receding_horizon=horizon, action_block=block))
    return solver


def _info(b=2, history=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(b, history, 3, 28, 28, generator=g), "goal": torch.randn(b, 1, 3, 28, 28, generator=g),
            "action": torch.randn(b, history, ENV_A * BLOCK, generator=g)}


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ any Costable: its algorithm, draw for draw
SAMPLING = dict(num_samples=20, topk=5, n_steps=3, seed=3, batch_size=1)


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (CEMSolver, swm.CEMSolver, {}),
    (MPPISolver, swm.MPPISolver, {"temperature": 0.3}),
    (MPPISolver, swm.MPPISolver, {"topk": 40, "num_samples": 20}),
    (ICEMSolver, swm.ICEMSolver, {"noise_beta": 1.5, "n_elite_keep": 2}),
    (ICEMSolver, swm.ICEMSolver, {"return_mean": False}),
])
def test_sampling_solvers_on_any_costable_equal_stable_worldmodel(ours, theirs, kwargs):
    cost = swm.QuadraticCost()
    settings = {**SAMPLING, **kwargs}
    a, b = _configure(ours(cost, **settings)), _configure(theirs(cost, **settings))
    info = {"state": torch.randn(2, 4)}
    init = torch.randn(2, 2, 3)
    got, want = a.solve(info, init_action=init), b.solve(info, init_action=init)
    _close(got["actions"], want["actions"])
    _close(got["var"][0], want["var"][0])
    _close(torch.tensor(got["costs"]), torch.tensor(want["costs"]))
    assert sorted(got) == ["actions", "costs", "mean", "var"]


def test_predictive_sampling_on_any_costable_equals_stable_worldmodel():
    cost = swm.QuadraticCost()
    a = _configure(PredictiveSamplingSolver(cost, num_samples=30, noise_scale=0.5, seed=2))
    b = _configure(swm.PredictiveSamplingSolver(cost, num_samples=30, noise_scale=0.5, seed=2))
    info, init = {"state": torch.randn(2, 4)}, torch.randn(2, 4, 3)
    got, want = a.solve(info, init.clone()), b.solve(info, init.clone())  # both write the plan into a full init
    assert sorted(got) == ["actions", "costs"]
    _close(got["actions"], want["actions"])
    _close(torch.tensor(got["costs"]), torch.tensor(want["costs"]))


@pytest.mark.parametrize("kwargs", [
    {},
    {"optimizer_cls": torch.optim.Adam, "optimizer_kwargs": {"lr": 0.05}, "grad_clip": 0.5, "action_noise": 0.1},
    {"batch_size": 1, "var_scale": 0.3},
])
def test_gradient_solver_on_any_costable_equals_stable_worldmodel(kwargs):
    cost = swm.QuadraticCost()
    settings = dict(n_steps=4, num_samples=5, seed=1, **kwargs)
    a, b = _configure(GradientSolver(cost, **settings)), _configure(swm.GradientSolver(cost, **settings))
    info = {"state": torch.randn(2, 4)}
    got, want = a.solve(info), b.solve(info)
    _close(got["actions"], want["actions"])
    _close(torch.tensor(got["cost"]), torch.tensor(want["cost"]))
    assert sorted(got) == ["actions", "cost"]


@pytest.mark.parametrize("cost", [swm.QuadraticCost(), swm.BoxConstrainedCost()])
def test_lagrangian_solver_on_any_costable_equals_stable_worldmodel(cost):
    settings = dict(n_steps=3, n_outer_steps=3, num_samples=4, seed=5, optimizer_kwargs={"lr": 0.1})
    a, b = _configure(LagrangianSolver(cost, **settings)), _configure(swm.LagrangianSolver(cost, **settings))
    for _ in range(2):  # multipliers persist across solves
        got, want = a.solve({}), b.solve({})
        _close(got["actions"], want["actions"])
        _close(torch.tensor(got["cost"]), torch.tensor(want["cost"]))
        if want["lambdas"] is None:
            assert got["lambdas"] is None and got["constraint_violation"] == []
        else:
            _close(got["lambdas"], want["lambdas"])
            assert len(got["constraint_violation"]) == 1 and got["constraint_violation"][0] >= 0


def test_categorical_cem_on_any_costable_equals_stable_worldmodel():
    cost = swm.QuadraticCost(target=0.3)
    settings = dict(num_samples=16, n_steps=3, topk=4, smoothing=0.05, alpha=0.2, seed=9)
    space = swm.DiscreteSpace(4)
    a = _configure(CategoricalCEMSolver(cost, **settings), block=2, space=space)
    b = _configure(swm.CategoricalCEMSolver(cost, **settings), block=2, space=space)
    got, want = a.solve({"state": torch.zeros(2, 1)}), b.solve({"state": torch.zeros(2, 1)})
    assert torch.equal(got["actions"], want["actions"]) and got["actions"].dtype == torch.int64
    _close(got["probs"][0], want["probs"][0])


def test_pgd_projects_onto_the_simplex_as_stable_worldmodel_and_plans_categories():
    x = torch.randn(7, 3 * 5, generator=torch.Generator().manual_seed(0)) * 2
    p = project_simplex(x, 5)
    _close(p, swm.project_simplex(x, 5))
    groups = p.view(7, 3, 5)
    assert (groups >= 0).all() and torch.allclose(groups.sum(-1), torch.ones(7, 3))
    solver = _configure(PGDSolver(swm.QuadraticCost(0.0), n_steps=3, num_samples=2, action_noise=0.1), block=3,
                        space=swm.DiscreteSpace(5))
    out = solver.solve({}, init_action=torch.randint(0, 5, (2, 2, 3)), from_scalar=True)
    assert out["actions"].shape == (2, 4, 3) and out["actions"].max() < 5 and len(out["cost"]) == 1


# ------------------------------------------------------------------ a LeWM: the same algorithms on the fused engine
@pytest.mark.parametrize("history, backend", [(1, "reference"), (3, "reference"), (3, "cpu")])
def test_gradient_solver_on_a_lewm_descends_through_the_engine_as_through_get_cost(model, history, backend):
    """Our GD on the LeWM (the engine's differentiable paired costs) against stable-worldmodel's GD on the same LeWM's
    own get_cost (autograd through its rollout): same steps, same samples, same plan."""
    settings = dict(n_steps=3, num_samples=4, seed=2, batch_size=1, optimizer_cls=torch.optim.Adam,
                    optimizer_kwargs={"lr": 0.1})  # batch_size 1: its LeWM criterion takes one env at a time
    ours = _configure(GradientSolver(model, backend=backend, **settings), a=ENV_A, horizon=5, block=BLOCK)
    theirs = _configure(swm.GradientSolver(model, **settings), a=ENV_A, horizon=5, block=BLOCK)
    info = _info(history=history)
    got = ours.solve(info)
    assert not any(p.grad is not None for p in model.parameters())  # weights frozen (its get_cost writes their .grad)
    want = theirs.solve(info)
    model.zero_grad(set_to_none=True)
    _close(torch.tensor(got["cost"]), torch.tensor(want["cost"]))
    _close(got["actions"], want["actions"])


def test_predictive_sampling_and_eager_icem_on_a_lewm_equal_stable_worldmodel(model):
    info = _info(history=3)
    ps = [_configure(cls(model, num_samples=12, noise_scale=0.7, seed=4), a=ENV_A, horizon=5, block=BLOCK)
          for cls in (PredictiveSamplingSolver, swm.PredictiveSamplingSolver)]
    got, want = (s.solve(info) for s in ps)
    _close(got["actions"], want["actions"])
    settings = dict(num_samples=12, topk=4, n_steps=2, seed=4, return_mean=False)
    icem = [_configure(cls(model, **settings), a=ENV_A, horizon=5, block=BLOCK) for cls in (ICEMSolver, swm.ICEMSolver)]
    got, want = (s.solve(info) for s in icem)
    _close(got["actions"], want["actions"])


def test_categorical_cem_on_a_lewm_feeds_one_hot_blocks_to_its_action_encoder(model):
    """Discrete(5) x action_block 2 = the tiny model's 10-wide action blocks."""
    settings = dict(num_samples=12, n_steps=2, topk=3, seed=1)
    solvers = [_configure(cls(model, **settings), horizon=5, block=2, space=swm.DiscreteSpace(5))
               for cls in (CategoricalCEMSolver, swm.CategoricalCEMSolver)]
    got, want = (s.solve(_info()) for s in solvers)
    assert torch.equal(got["actions"], want["actions"])
    _close(torch.tensor(got["costs"]), torch.tensor(want["costs"]))


def test_callbacks_on_a_lewm_run_the_eager_loop_over_the_fused_costs(model):
    """With callbacks the CEM solver runs stable-worldmodel's loop (per-step state for the callbacks) over the same
    costs: the plan equals the fused planner's on CPU."""
    cbs = [BestCostRecorder(), EliteCostRecorder(), MeanShiftRecorder()]
    kwargs = dict(num_samples=16, topk=4, n_steps=3, seed=7, backend="cpu")
    with_cb = _configure(CEMSolver(model, callbacks=cbs, **kwargs), a=ENV_A, horizon=5, block=BLOCK)
    fused = _configure(CEMSolver(model, **kwargs), a=ENV_A, horizon=5, block=BLOCK)
    got, want = with_cb.solve(_info()), fused.solve(_info())
    _close(got["actions"], want["actions"])
    assert set(got["callbacks"]) == {"BestCostRecorder", "EliteCostRecorder", "MeanShiftRecorder"}
    assert [len(h) for h in got["callbacks"]["BestCostRecorder"]] == [3, 3]  # 2 chunks (batch_size 1) x 3 steps
    assert "callbacks" not in want


# ------------------------------------------------------------------ protocol, attributes, warnings
@pytest.mark.parametrize("cls", ALL)
def test_unconfigured_solvers_are_not_solvers_yet(cls):
    """stable-worldmodel's runtime-checkable Solver protocol: properties that raise AttributeError before configure()
    make isinstance False, as with its own solvers (issue 25 item 14)."""
    kwargs = {"n_steps": 2} if cls in (GradientSolver, LagrangianSolver, PGDSolver) else {}
    solver = cls(swm.QuadraticCost(), **kwargs)
    assert not isinstance(solver, swm.Solver)
    with pytest.raises(AttributeError, match="configure|horizon"):  # nn.Module solvers: "no attribute .horizon."
        solver.horizon
    if cls in (CategoricalCEMSolver, PGDSolver):
        _configure(solver, space=swm.DiscreteSpace(3))
        assert solver.horizon == 4
        assert isinstance(solver, swm.Solver) == (cls is PGDSolver)  # categorical CEM has no action_dim, as there
    else:
        _configure(solver)
        assert isinstance(solver, swm.Solver) and solver.n_envs == 2 and solver.action_dim == 3


@pytest.mark.parametrize("cls", ALL)
def test_every_constructor_argument_is_a_public_attribute(cls):
    values = {"n_steps": 7, "batch_size": 3, "num_samples": 11, "var_scale": 0.5, "topk": 4, "temperature": 0.2,
              "noise_beta": 1.5, "alpha": 0.3, "n_elite_keep": 2, "return_mean": False, "noise_scale": 0.4,
              "smoothing": 0.1, "action_noise": 0.05, "grad_clip": 2.0, "n_outer_steps": 2, "rho_init": 0.5,
              "rho_max": 9.0, "rho_scale": 3.0, "persist_multipliers": False, "seed": 5, "device": "cpu",
              "optimizer_cls": torch.optim.Adam, "optimizer_kwargs": {"lr": 0.3}, "history_pairing": "executed",
              "backend": "reference", "fused_planner": True, "action_bounds": ([-1.0] * 3, [1.0] * 3),
              "bounds_mode": "penalty", "bounds_weight": 2.0}
    params = [p for p in inspect.signature(cls).parameters if p != "model"]
    kwargs = {p: values[p] for p in params if p not in ("callbacks", "idm")}  # idm= needs a LeWM: test_swm_idm.py
    cbs = [BestCostRecorder()]
    if "callbacks" in params:
        kwargs["callbacks"] = cbs
    model = swm.QuadraticCost()
    solver = cls(model, **kwargs)
    assert solver.model is model
    for name, value in kwargs.items():
        assert getattr(solver, name) == value, name


@pytest.mark.parametrize("cls", [CEMSolver, MPPISolver, ICEMSolver, PredictiveSamplingSolver, GradientSolver,
                                 LagrangianSolver])
def test_a_discrete_space_is_logged_as_a_warning_like_stable_worldmodel(cls, caplog):
    kwargs = {"n_steps": 2} if cls in (GradientSolver, LagrangianSolver) else {}
    with caplog.at_level(logging.WARNING, logger="lewm_fast.integrations.stable_worldmodel"):
        _configure(cls(swm.QuadraticCost(), **kwargs), space=swm.DiscreteSpace(4))
    assert "Action space is discrete" in caplog.text and cls.__name__ in caplog.text


def test_discrete_solvers_refuse_a_box_like_stable_worldmodel():
    for solver in (CategoricalCEMSolver(swm.QuadraticCost()), PGDSolver(swm.QuadraticCost(), n_steps=1)):
        with pytest.raises(AssertionError, match="Discrete|discrete"):
            _configure(solver)


def test_gradient_callbacks_see_the_gradient_and_reset_between_solves():
    cbs = [GradNormRecorder(), ActionNormRecorder(reduction="none")]
    solver = _configure(GradientSolver(swm.QuadraticCost(), n_steps=3, num_samples=2, batch_size=1, callbacks=cbs))
    for _ in range(2):
        out = solver.solve({"state": torch.zeros(2, 1)})
        assert [len(h) for h in out["callbacks"]["GradNormRecorder"]] == [3, 3]
        assert all(v > 0 for h in out["callbacks"]["GradNormRecorder"] for v in h)
        assert len(out["callbacks"]["ActionNormRecorder"][0][0]) == 1  # per env of a 1-env chunk


def test_costs_of_the_wrong_shape_or_without_gradient_fail_its_assertions():
    class Flat:
        def get_cost(self, info, cand):
            return cand.sum()

    class Detached:
        def get_cost(self, info, cand):
            return cand.detach().pow(2).sum((-1, -2))

    with pytest.raises(AssertionError, match="shape"):
        _configure(CEMSolver(Flat(), num_samples=4, topk=2, n_steps=1)).solve({"s": torch.zeros(2, 1)})
    with pytest.raises(AssertionError, match="requires_grad"):
        _configure(GradientSolver(Detached(), n_steps=1)).solve({"s": torch.zeros(2, 1)})


# ------------------------------------------------------------------ where the streams differ: in distribution
def test_fused_icem_noise_is_close_to_stable_worldmodels_but_not_its_distribution():
    """ICEMSolver(fused_planner=True) on a LeWM plans on ICEMPlanner, whose coloured noise is a fixed linear map of
    white noise: the same correlation between steps as stable-worldmodel's FFT-filtered noise (both spectra 1/f^beta,
    the zero frequency at the lowest one's amplitude) and unit variance per step. stable-worldmodel then rescales each
    sample to unit empirical std over the horizon, which raises the per-step variance and changes the correlation:
    why the default (fused_planner=False) runs its own loop over the fused costs instead."""
    from lewm_fast.planning import colored_noise_basis

    beta, horizon, n = 2.0, 5, 40000
    g = torch.Generator().manual_seed(0)
    basis = colored_noise_basis(beta, horizon)
    ours = torch.randn(n, basis.shape[0], generator=g) @ basis
    freqs = torch.fft.rfftfreq(horizon)
    freqs[0] = 1.0
    scale = freqs.pow(-beta / 2)
    scale[0] = scale[1]
    colored = torch.fft.irfft(torch.fft.rfft(torch.randn(n, horizon, generator=g), dim=-1) * scale, n=horizon, dim=-1)
    torch.testing.assert_close(torch.corrcoef(ours.T), torch.corrcoef(colored.T), atol=0.03, rtol=0)
    theirs = colored / colored.std(dim=-1, keepdim=True)
    assert abs(ours.var(0).mean().item() - 1) < 0.03 and theirs.var(0).mean().item() > 1.4


def test_icem_on_a_lewm_runs_its_loop_unless_the_fused_planner_is_asked_for(model):
    info = _info(history=1)
    settings = dict(num_samples=12, topk=4, n_steps=2, seed=4)
    eager = _configure(ICEMSolver(model, backend="cpu", **settings), a=ENV_A, horizon=5, block=BLOCK)
    standin = _configure(swm.ICEMSolver(model, **settings), a=ENV_A, horizon=5, block=BLOCK)
    _close(eager.solve(info)["actions"], standin.solve(info)["actions"])
    fused = _configure(ICEMSolver(model, backend="cpu", fused_planner=True, **settings), a=ENV_A, horizon=5, block=BLOCK)
    out = fused.solve(info)
    assert out["actions"].shape == (2, 5, ENV_A * BLOCK) and torch.isfinite(out["actions"]).all()


@pytest.mark.parametrize("cls", [CEMSolver, MPPISolver, ICEMSolver, PredictiveSamplingSolver, GradientSolver,
                                 LagrangianSolver])
def test_action_bounds_are_off_by_default_and_clip_every_solver_when_given(cls):
    """lewm_fast's option (issue 25): ``action_bounds=(low, high)`` in the model's units keeps the plans inside; off by
    default, so the plans stay stable-worldmodel's."""
    kwargs = {"n_steps": 3} if cls in (GradientSolver, LagrangianSolver) else {"num_samples": 20, "seed": 1}
    if cls in (CEMSolver, MPPISolver, ICEMSolver):
        kwargs.update(topk=5, n_steps=3)
    far = swm.QuadraticCost(target=3.0)  # the optimum lies outside +-0.5
    free = _configure(cls(far, **kwargs)).solve({"s": torch.zeros(2, 1)})["actions"]
    bounded = _configure(cls(far, action_bounds=([-0.5] * 3, [0.5] * 3), **kwargs)).solve({"s": torch.zeros(2, 1)})
    assert free.abs().max() > 0.5 and bounded["actions"].abs().max() <= 0.5 + 1e-5


def test_action_bounds_reach_the_fused_planner(model):
    bounds = ([-0.2] * 10, [0.2] * 10)
    solver = _configure(CEMSolver(model, backend="cpu", action_bounds=bounds, num_samples=12, topk=3, n_steps=2),
                        a=ENV_A, horizon=5, block=BLOCK)
    assert solver.planner.bounds is not None and solver.planner.bounds.mode == "clip"
    assert solver.solve(_info())["actions"].abs().max() <= 0.2 + 1e-6
