"""lewm_fast.integrations.stable_worldmodel: our planners behind stable-worldmodel's Solver protocol, checked against
stand-ins of its LeWM cost, solvers and WorldModelPolicy (tests/swm_solver_standins.py), not against lewm_fast."""

import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import pytest
import torch

from lewm_fast import CEMPlanner, build_model
from lewm_fast.backends import triton_available
from lewm_fast.integrations.stable_worldmodel import CEMSolver, ICEMSolver, MPPISolver
from lewm_fast.ops.predictor import PredictorOps
from lewm_fast.planning import PlannerBase, RolloutEngine
from lewm_fast.planning.fused_predictor import FusedRollout

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


@pytest.mark.parametrize("history, horizon", [(1, 3), (2, 4), (3, 5), (3, 3)])
@pytest.mark.parametrize("backend", ["cpu", "reference", "fused_reference", "triton"])
def test_paired_costs_equal_get_cost_on_every_backend(model, backend, history, horizon):
    """``RolloutEngine.paired_costs`` (what the adapter's loop calls) on each backend, down to T = H (one prediction);
    "fused_reference": the fused schedule on the plain-PyTorch ops (the fallback without kernel libraries)."""
    if backend == "triton" and not triton_available(torch.device("cpu")):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    solver = _configured(CEMSolver(model, backend="cpu" if backend == "fused_reference" else backend, **SOLVER), b=2,
                         horizon=horizon)
    if backend == "fused_reference":
        solver.planner.engine.fused = FusedRollout(model, PredictorOps())
    info = _info(b=2, history=history)
    cand = torch.randn(2, 6, horizon, ENV_A * BLOCK, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # its criterion takes one env at a time (see bench/gpu_trace.py, trace_swm)
        theirs = torch.cat([model.get_cost({k: v[i:i + 1].unsqueeze(1).expand(1, 6, *v.shape[1:]) for k, v in
                                            info.items()}, cand[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(solver.get_cost(info, cand), theirs, rtol=1e-5, atol=1e-5)


def test_paired_costs_need_a_horizon_of_at_least_the_history(model):
    engine = RolloutEngine(model, backend="cpu")
    d, a = engine.latent_dim, engine.action_dim
    with pytest.raises(ValueError, match=r"candidates must have shape \(B=1, N, T>=3"):
        engine.paired_costs(torch.zeros(1, 3, d), torch.zeros(1, d), torch.zeros(1, 4, 2, a))
    with pytest.raises(ValueError, match=r"candidates must have shape \(B=1"):
        engine.paired_costs(torch.zeros(1, 3, d), torch.zeros(1, d), torch.zeros(2, 4, 3, a))


@pytest.mark.parametrize("cls", [CEMSolver, MPPISolver, ICEMSolver])
def test_adapter_captures_its_plans_at_any_history(model, cls, monkeypatch):
    """Where the planner captures (Triton on CUDA), plans at history 3 are one CUDA graph like the plain planners'."""
    planner = _configured(cls(model, **SOLVER)).planner
    monkeypatch.setattr(PlannerBase, "captures", property(lambda self: True))  # as on a CUDA device
    for h in (1, 3):
        emb_ctx = torch.zeros(2, h, planner.engine.latent_dim)
        assert planner._capturable(emb_ctx)
        assert planner._new_buffers(emb_ctx).runner.capture


@pytest.mark.parametrize("planner", ["cem", "mppi", "icem"])
def test_adapter_loop_at_history_3_is_no_more_work_than_the_plain_planners(planner):
    """Structural (ops recorded on meta tensors, Triton backend): at history 3 the adapter's iteration runs no op the
    plain planner's does not (no per-candidate context copies, no host sync), each at most as often, the same ops
    every iteration (static shapes), and nothing before its first sampling (no context precompute it would not use)."""
    pytest.importorskip("triton")
    from lewm_fast.precompile import record_plan_ops

    settings = dict(planner=planner, history=3, num_samples=24, topk=5, horizon=5)
    ours = build_model(tiny_config()).eval()
    ops = {pairing: record_plan_ops(ours, 3, history_pairing=pairing, **settings) for pairing in ("swm", "executed")}

    def iteration(pairing, i=1):
        return collections.Counter(getattr(e, "name", "triton") for phase, e in ops[pairing] if phase == f"iter{i}")

    swm, plain = iteration("swm"), iteration("executed")
    assert swm and not swm - plain, f"ops the plain planner does not run as often: {dict(swm - plain)}"
    assert sum(swm.values()) < sum(plain.values())  # T - H + 1 = 3 steps of 3 own tokens instead of 5 steps
    assert "device_to_host" not in swm
    assert not swm - iteration("swm", 0)  # iteration 0 runs the same ops (plus the first validation of each kernel
    # call signature, kernels/_launch.py PlanCache)
    assert not [e for phase, e in ops["swm"] if phase == "prepare"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [CEMSolver, MPPISolver])
def test_cuda_graph_replays_at_history_3_equal_eager_plans(model, cls):
    cuda_model = swm.CostableLeWM(*[getattr(model, n) for n in ("encoder", "predictor", "action_encoder", "projector",
                                                                "pred_proj")])
    cuda_model.load_state_dict(model.state_dict())
    cuda_model = cuda_model.eval().cuda()
    solvers = [_configured(cls(cuda_model, device="cuda", batch_size=2, **SOLVER)) for _ in range(2)]
    solvers[1].planner.cuda_graph = False
    assert solvers[0].planner.captures and not solvers[1].planner.captures
    info = {k: v.cuda() for k, v in _info(history=3).items()}
    for _ in range(3):  # capture, then replays
        got, want = (s.solve(info)["actions"] for s in solvers)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(buf.runner.graph is not None for buf in solvers[0].planner._buffers.values())


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
        (lambda m: CEMSolver(m).solve(_info()), "not configured"),
        (lambda m: _configured(CEMSolver(m)).solve({"pixels": _info()["pixels"]}), "info_dict has no 'goal'"),
        (lambda m: _configured(CEMSolver(m)).solve({**_info(), "pixels": _info()["pixels"].numpy()}), "image transform"),
        (lambda m: _configured(CEMSolver(m)).solve({**_info(), "goal": torch.randn(2, 3, 28, 28)}), "must have 5 dimensions"),
        (lambda m: _configured(CEMSolver(m)).solve(_info(), init_action=torch.zeros(2, 6, 10)), "init_mean must have shape"),
        (lambda m: _configured(CEMSolver(m), horizon=2).solve(_info(history=3)), "horizon .2. must be at least"),
        (lambda m: CEMSolver(m).configure(action_space=swm.BoxSpace((2, 3)), n_envs=2,
                                          config=swm.PlanConfig(5, 5, action_block=BLOCK)), "10-wide action blocks"),
    ],
)
def test_bad_input_is_named(model, make, match):
    with pytest.raises((ValueError, TypeError, KeyError, RuntimeError, AttributeError), match=match):
        make(model)
