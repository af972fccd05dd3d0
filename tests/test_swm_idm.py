"""The GC-IDM behind stable-worldmodel's Solver protocol: ``IDMSolver`` and ``CEMSolver(idm=...)`` on its LeWM
(the stand-in of tests/swm_solver_standins.py), in its WorldModelPolicy's call sequence, batched over envs, checked
against lewm_fast's ``IDMInit`` / ``CEMPlanner(init=IDMInit)`` (``lewm-eval planner=idm_cem``); bad inputs raise
with the reason."""

import pytest
import torch

from lewm_fast import build_model
from lewm_fast.integrations.stable_worldmodel import CEMSolver, IDMSolver, callbacks
from lewm_fast.io import CheckpointError
from lewm_fast.io.idm import save_idm, weights_hash
from lewm_fast.planning import CEMPlanner
from lewm_fast.planning.idm import IDMInit, IDMPolicy
from lewm_fast.reference.idm import GCIDM

import swm_solver_standins as swm
from conftest import randomize_, tiny_config
from test_swm_solver_planners import models  # noqa: F401 - (lewm_fast LeWM, its stand-in LeWM), the same weights

pytestmark = pytest.mark.usefixtures("one_thread")
ENV_A, BLOCK = 2, 5  # the tiny model takes 10-wide action blocks
CEM = dict(num_samples=24, topk=5, n_steps=3, seed=7, backend="cpu")
META = {"env": "two_room", "frameskip": BLOCK, "env_action_dim": ENV_A, "horizon": 5}


@pytest.fixture(scope="module")
def idm(models):
    torch.manual_seed(1)
    return GCIDM(models[0].latent_dim, models[0].action_dim, hidden=32, layers=2, horizon=5).eval()


@pytest.fixture(scope="module")
def idm_folder(models, idm, tmp_path_factory):
    """The IDM saved as lewm-train-idm saves it, tied to the models' weights."""
    return save_idm(tmp_path_factory.mktemp("idm"), idm, weights_hash(models[0]), META).parent


def _info(b=3, history=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(b, history, 3, 28, 28, generator=g), "goal": torch.randn(b, 1, 3, 28, 28, generator=g),
            "action": torch.randn(b, history, ENV_A * BLOCK, generator=g)}


def _configured(solver, b=3, horizon=4, receding=1, block=BLOCK, env_a=ENV_A):
    solver.configure(action_space=swm.BoxSpace((b, env_a)), n_envs=b,
                     config=swm.PlanConfig(horizon=horizon, receding_horizon=receding, action_block=block))
    return solver


def _idm_init_plan(ours, idm, info, horizon=4, history=None):
    emb_ctx, goal = ours.encode(info["pixels"]), ours.encode(info["goal"])[:, 0]
    hist = torch.zeros(emb_ctx.shape[0], 0, ours.action_dim) if history is None else history
    with torch.no_grad():
        return IDMInit(ours, idm, horizon)(emb_ctx, hist, goal)


@pytest.mark.parametrize("source", ["folder", "policy", "module"])
def test_idm_solver_plans_the_idms_latent_rollout_for_every_env(models, idm, idm_folder, source):
    ours, standin = models
    given = {"folder": idm_folder, "policy": IDMPolicy(ours, idm), "module": idm}[source]
    solver = _configured(IDMSolver(standin, given))
    assert solver.idm is given and solver.model is standin
    info = _info()
    out = solver.solve(info)
    assert sorted(out) == ["actions", "costs"] and out["actions"].shape == (3, 4, ENV_A * BLOCK)
    assert out["actions"].device.type == "cpu" and len(out["costs"]) == 3
    torch.testing.assert_close(out["actions"], _idm_init_plan(ours, idm, info), rtol=1e-5, atol=1e-6)
    # costs: its LeWM's get_cost of each env's plan (its criterion takes one env at a time)
    with torch.no_grad():
        want = torch.cat([standin.get_cost({k: v[i:i + 1].unsqueeze(1) for k, v in info.items()},
                                           out["actions"][i:i + 1].unsqueeze(1))[:, 0] for i in range(3)])
    torch.testing.assert_close(torch.tensor(out["costs"]), want, rtol=1e-4, atol=1e-5)
    # batched over envs: each env alone plans the same
    alone = torch.cat([solver.solve({k: v[i:i + 1] for k, v in info.items()})["actions"] for i in range(3)])
    torch.testing.assert_close(alone, out["actions"], rtol=1e-5, atol=1e-6)
    assert solver.solve(info, init_action=torch.ones(3, 3, ENV_A * BLOCK))["actions"].equal(out["actions"])


def test_idm_solver_in_world_model_policy(models, idm_folder):
    """WorldModelPolicy's call sequence: replans every block (receding horizon 1), one env action per call, the
    first block of each plan executed."""
    ours, standin = models
    solver = IDMSolver(standin, idm_folder)
    policy = swm.WorldModelPolicy(solver, swm.PlanConfig(horizon=4, receding_horizon=1, action_block=BLOCK))
    policy.set_env(swm.VectorEnv(2, swm.BoxSpace((2, ENV_A))))
    for block in range(2):
        info = _info(b=2, seed=block)
        actions = torch.stack([torch.as_tensor(policy.get_action(info)) for _ in range(BLOCK)])  # (BLOCK, envs, A)
        want = solver.solve(info)["actions"][:, 0].reshape(2, BLOCK, ENV_A).transpose(0, 1)
        torch.testing.assert_close(actions, want)


def test_idm_solver_with_the_executed_action_history(models, idm_folder, idm):
    ours, standin = models
    info = _info(history=2)
    with pytest.raises(ValueError, match=r"needs the actions executed between them: history_pairing='executed'"):
        _configured(IDMSolver(standin, idm_folder)).solve(info)
    out = _configured(IDMSolver(standin, idm_folder, history_pairing="executed")).solve(info)
    want = _idm_init_plan(ours, idm, info, history=info["action"][:, :1])
    torch.testing.assert_close(out["actions"], want, rtol=1e-5, atol=1e-6)


def test_cem_solver_seeded_by_the_idm_is_planner_idm_cem(models, idm, idm_folder):
    """CEMSolver(idm=...): the fused path equals lewm_fast's CEMPlanner(init=IDMInit) (planner=idm_cem) with the same
    seed and draws, the loop path (with callbacks) the same plan; n_steps=0 returns the IDM's plan and its cost."""
    ours, standin = models
    info = _info()
    solver = _configured(CEMSolver(standin, batch_size=3, idm=idm_folder, **CEM), horizon=5)
    assert solver.idm == idm_folder
    fused = solver.solve(info)
    planner = CEMPlanner(ours, horizon=5, init=IDMInit(ours, idm, 5), **CEM)
    want = planner.plan(info["pixels"], info["goal"][:, -1])
    torch.testing.assert_close(fused["actions"], want, rtol=1e-5, atol=1e-6)
    recorder = callbacks.MeanCostRecorder()
    loop = _configured(CEMSolver(standin, batch_size=3, idm=idm_folder, callbacks=[recorder], **CEM), horizon=5)
    looped = loop.solve(info)
    torch.testing.assert_close(looped["actions"], fused["actions"], rtol=1e-4, atol=1e-5)
    assert len(looped["callbacks"][recorder.output_key][0]) == CEM["n_steps"]
    plain = _configured(CEMSolver(standin, batch_size=3, **CEM), horizon=5).solve(info)
    assert not torch.allclose(plain["actions"], fused["actions"])  # the seed matters
    seed_only = {**CEM, "n_steps": 0}
    idm_plan = _configured(IDMSolver(standin, idm_folder), horizon=5).solve(info)
    for kwargs in ({}, {"callbacks": [callbacks.MeanCostRecorder()]}):
        out = _configured(CEMSolver(standin, batch_size=3, idm=idm_folder, **seed_only, **kwargs), horizon=5).solve(info)
        torch.testing.assert_close(out["actions"], idm_plan["actions"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(out["costs"]), torch.tensor(idm_plan["costs"]), rtol=1e-4, atol=1e-5)


def test_bad_idm_inputs_raise_with_the_reason(models, idm, idm_folder, tmp_path):
    ours, standin = models
    other = randomize_(build_model(tiny_config()), 5).eval()
    stranger = save_idm(tmp_path / "other", idm, weights_hash(other), META).parent
    with pytest.raises(CheckpointError, match="was trained on another world model"):
        IDMSolver(standin, stranger)
    with pytest.raises(CheckpointError, match="was trained on another world model"):
        CEMSolver(standin, idm=stranger)
    with pytest.raises(ValueError, match="the IDMPolicy's world model has other weights"):
        IDMSolver(standin, IDMPolicy(other, idm))
    with pytest.raises(CheckpointError, match="no GC-IDM checkpoint"):
        IDMSolver(standin, tmp_path / "missing")
    with pytest.raises(TypeError, match="idm must be a lewm-train-idm folder or idm.pt, an IDMPolicy or a GCIDM"):
        IDMSolver(standin, 3)
    with pytest.raises(TypeError, match="IDMSolver needs idm="):
        IDMSolver(standin, None)
    with pytest.raises(TypeError, match="idm= needs a LeWM model"):
        CEMSolver(swm.QuadraticCost(), idm=idm)
    with pytest.raises(ValueError, match="n_steps=0 .* needs idm="):
        CEMSolver(standin, n_steps=0)
    with pytest.raises(ValueError, match="trained for frameskip 5 x 2-d env actions, but this env acts with "
                                         "action_block 2 x 5"):
        _configured(IDMSolver(standin, idm_folder), block=2, env_a=5)
    narrow = GCIDM(ours.latent_dim, 4, hidden=8, layers=1)
    with pytest.raises(ValueError, match="the IDM maps .* to 4-wide action blocks"):
        _configured(CEMSolver(standin, idm=narrow))
    with pytest.raises(AttributeError, match="is not configured"):
        IDMSolver(standin, idm).solve(_info())

