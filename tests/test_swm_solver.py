"""lewm_fast.integrations.stable_worldmodel: our planners behind stable-worldmodel's Solver protocol, checked against
stand-ins of its LeWM cost, solvers and WorldModelPolicy (tests/swm_solver_standins.py), not against lewm_fast."""

import pytest
import torch

from lewm_fast import CEMPlanner, build_model
from lewm_fast.integrations.stable_worldmodel import CEMSolver, ICEMSolver, MPPISolver

import swm_solver_standins as swm
import swm_standins
from conftest import randomize_, tiny_config

ENV_A, BLOCK = 2, 5  # the tiny model takes 10-wide action blocks
SOLVER = dict(num_samples=24, topk=5, n_steps=4, seed=7)


@pytest.fixture(scope="module")
def model():
    """stable-worldmodel stand-in LeWM (with its get_cost) holding random weights, in eval mode."""
    torch.manual_seed(0)
    ours = randomize_(build_model(tiny_config())).eval()
    standin = swm.CostableLeWM(*[getattr(swm_standins.build_standin(build_model(tiny_config()).encoder), name) for name in
                                 ("encoder", "predictor", "action_encoder", "projector", "pred_proj")])
    standin.load_state_dict(ours.state_dict())
    return standin.eval()


def _info(b=2, history=1, seed=0):
    """What WorldModelPolicy hands the solver: transformed pixels (B,H,3,h,w), goal (B,1,3,h,w), action history."""
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(b, history, 3, 28, 28, generator=g), "goal": torch.randn(b, 1, 3, 28, 28, generator=g),
            "action": torch.randn(b, history, ENV_A * BLOCK, generator=g)}


def _configured(solver, b=2, horizon=5, receding=5):
    solver.configure(action_space=swm.BoxSpace((b, ENV_A)), n_envs=b,
                     config=swm.PlanConfig(horizon=horizon, receding_horizon=receding, action_block=BLOCK))
    return solver


@pytest.mark.parametrize("history", [1, 3])
def test_costs_equal_stable_worldmodel_get_cost(model, history):
    solver = _configured(CEMSolver(model, **SOLVER), b=1)
    info = _info(b=1, history=history)
    cand = torch.randn(1, 40, 5, ENV_A * BLOCK, generator=torch.Generator().manual_seed(3))
    expanded = {k: v.unsqueeze(1).expand(1, 40, *v.shape[1:]) for k, v in info.items()}
    with torch.no_grad():
        theirs = model.get_cost(expanded, cand)
    ours = solver.get_cost(info, cand)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.topk(5, largest=False).indices.sort().values, theirs.topk(5, largest=False).indices.sort().values)


@pytest.mark.parametrize("history", [1, 3])
@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_plans_match_stable_worldmodel_solvers_draw_for_draw(model, history, kind):
    """Same weights, seed and chunking (batch_size=1, its default): the same candidates every iteration, so the same
    elites, plan, costs and std (CPU, where both draw torch.randn from the seeded generator)."""
    ours_cls, theirs_cls = {"cem": (CEMSolver, swm.CEMSolver), "mppi": (MPPISolver, swm.MPPISolver)}[kind]
    ours = _configured(ours_cls(model, backend="cpu", **SOLVER))
    theirs = _configured(theirs_cls(model, **SOLVER))
    info = _info(history=history)
    init = torch.randn(2, 2, ENV_A * BLOCK, generator=torch.Generator().manual_seed(5))
    got, want = ours.solve(info, init_action=init), theirs.solve(info, init_action=init)
    assert sorted(got) == sorted(want) == ["actions", "costs", "mean", "var"]
    torch.testing.assert_close(got["actions"], want["actions"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["var"][0], want["var"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["costs"]), torch.tensor(want["costs"]), rtol=1e-4, atol=1e-6)
    assert got["actions"].device.type == "cpu" and got["actions"].shape == (2, 5, ENV_A * BLOCK)


def test_swaps_into_world_model_policy(model):
    """WorldModelPolicy's call sequence (receding horizon 2 of 5, warm start from the unexecuted rest, one env action
    per call): our solver gives the policy the same env actions as stable-worldmodel's CEM."""
    actions = {}
    for name, cls in (("ours", CEMSolver), ("theirs", swm.CEMSolver)):
        kwargs = dict(backend="cpu") if cls is CEMSolver else {}
        policy = swm.WorldModelPolicy(cls(model, **SOLVER, **kwargs), swm.PlanConfig(horizon=5, receding_horizon=2,
                                                                                      action_block=BLOCK))
        policy.set_env(swm.VectorEnv(2, swm.BoxSpace((2, ENV_A))))
        actions[name] = torch.stack([torch.as_tensor(policy.get_action(_info(seed=step // 10)))
                                     for step in range(2 * 2 * BLOCK + 1)])
    assert actions["ours"].shape == (2 * 2 * BLOCK + 1, 2, ENV_A)
    torch.testing.assert_close(actions["ours"], actions["theirs"], rtol=1e-4, atol=1e-5)


def test_batch_size_chunks_envs_and_all_at_once_plans_the_same_problem(model):
    info = _info(b=3)
    one = _configured(CEMSolver(model, backend="cpu", **SOLVER), b=3).solve(info)
    together = _configured(CEMSolver(model, backend="cpu", batch_size=3, **SOLVER), b=3).solve(info)
    assert one["actions"].shape == together["actions"].shape == (3, 5, ENV_A * BLOCK) and len(together["costs"]) == 3
    assert not torch.equal(one["actions"], together["actions"])  # other draws (one randn per chunk) ...
    assert all(c > 0 for c in together["costs"])  # ... of the same problem


def test_executed_pairing_is_lewm_fast_planning_with_the_executed_history(model):
    info = _info(history=3)
    solver = _configured(CEMSolver(model, backend="cpu", batch_size=2, history_pairing="executed", **SOLVER))
    got = solver.solve(info)["actions"]
    lewm = solver.lewm
    planner = CEMPlanner(lewm, backend="cpu", horizon=5, **SOLVER)
    want = planner.plan(info["pixels"], info["goal"][:, -1], action_history=info["action"][:, :2])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"history_pairing='executed' needs info_dict\['action'\]"):
        solver.solve({k: v for k, v in info.items() if k != "action"})


def test_pairings_coincide_at_history_one(model):
    info = _info(history=1)
    plans = [_configured(CEMSolver(model, backend="cpu", history_pairing=p, **SOLVER)).solve(info)["actions"]
             for p in ("swm", "executed")]
    torch.testing.assert_close(plans[0], plans[1], rtol=0, atol=0)


def test_icem_solver_plans_under_the_protocol(model):
    solver = _configured(ICEMSolver(model, backend="cpu", n_elite_keep=2, **SOLVER))
    assert isinstance(solver, swm.Solver) and solver.planner.n_keep == 2 and solver.planner.momentum == 0.1
    out = solver.solve(_info(history=3))
    assert out["actions"].shape == (2, 5, ENV_A * BLOCK) and torch.isfinite(out["actions"]).all()
    assert out["var"][0].shape == (2, 5, ENV_A * BLOCK) and len(out["costs"]) == 2


def test_solvers_accept_lewm_fast_models_and_inference_mode(model):
    ours = randomize_(build_model(tiny_config())).eval()
    solver = _configured(CEMSolver(ours, backend="cpu", **SOLVER))
    with torch.inference_mode():
        a = solver.solve(_info())["actions"]
    b = _configured(CEMSolver(model, backend="cpu", **SOLVER)).solve(_info())["actions"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # same weights through either model class


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: CEMSolver(m, history_pairing="both"), "history_pairing must be one of"),
        (lambda m: CEMSolver(m, device="cuda:0"), "but the model is on cpu"),
        (lambda m: CEMSolver(m, batch_size=0), "batch_size must be >= 1"),
        (lambda m: ICEMSolver(m, return_mean=False), "return_mean=False"),
        (lambda m: ICEMSolver(m, n_elite_keep=40), r"n_elite_keep \(40\) must be <= topk"),
        (lambda m: CEMSolver(m).solve(_info()), "not configured"),
        (lambda m: _configured(CEMSolver(m)).solve({"pixels": _info()["pixels"]}), "info_dict has no 'goal'"),
        (lambda m: _configured(CEMSolver(m)).solve({**_info(), "pixels": _info()["pixels"].numpy()}), "image transform"),
        (lambda m: _configured(CEMSolver(m)).solve({**_info(), "goal": torch.randn(2, 3, 28, 28)}), "must have 5 dimensions"),
        (lambda m: _configured(CEMSolver(m)).solve(_info(), init_action=torch.zeros(2, 6, 10)), "init_action must have"),
        (lambda m: _configured(CEMSolver(m), horizon=2).solve(_info(history=3)), "horizon .2. must be at least"),
        (lambda m: CEMSolver(m).configure(action_space=swm.BoxSpace((2, 3)), n_envs=2,
                                          config=swm.PlanConfig(5, 5, action_block=BLOCK)), "10-wide action blocks"),
    ],
)
def test_bad_input_is_named(model, make, match):
    with pytest.raises((ValueError, TypeError, KeyError, RuntimeError), match=match):
        make(model)
