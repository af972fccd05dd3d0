"""GC-IDM (lewm-train-idm, IDMPolicy, CEMPlanner(init=IDMInit)): training lowers the held-out loss of a tiny run and
resumes exactly, the IDM recovers the action of a synthetic linear latent system, idm_cem with 0 iterations returns
the IDM's plan, the policy is batched over envs, and bad inputs end in one `error:` line; the shipped Two-Room IDM
belongs to the shipped model, and lewm-fast web exports a site again when the run's IDM changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lewm_fast import build_model
from lewm_fast.cli.evaluate import main as eval_main
from lewm_fast.cli.train_idm import main as train_idm_main
from lewm_fast.data import ActionCodec, collect
from lewm_fast.io import NORMALIZATION
from lewm_fast.io.idm import load_idm, read_idm_file, weights_hash
from lewm_fast.planning import CEMPlanner
from lewm_fast.planning.idm import IDMInit, IDMPolicy, idm_rollout
from lewm_fast.reference.idm import GCIDM
from lewm_fast.training.idm import (
    EpisodeLatents, HindsightPairs, IDMTrainSettings, heldout_baseline, heldout_loss, train_idm,
)

from conftest import randomize_, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["hidden=32", "layers=2", "batch_size=64", "progress=false"]


def make_run(root, data, seed=0, frameskip=5):
    """A lewm-train-style run folder of a tiny random 28 px LeWM trained (nominally) on ``data``."""
    torch.manual_seed(seed)
    model = randomize_(build_model(tiny_config(image_size=28, patch_size=14)), seed).eval()
    folder = root / "checkpoints" / "step_00000010"
    model.save_pretrained(folder)
    norm = {"env": "two_room", "frameskip": frameskip, "action": {"mean": [0.0, 0.0], "std": [0.5, 0.5]},
            "data": {"path": str(data), "held_out_episodes": [4, 5]}}
    (folder / NORMALIZATION).write_text(json.dumps(norm))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect("two_room", 6, tmp_path_factory.mktemp("idm_data") / "tr.h5", episode_len=40, image_size=28,
                   seed=0, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    return make_run(tmp_path_factory.mktemp("idm_run"), data)


@pytest.fixture(scope="module")
def trained(run):
    """The run with an IDM trained for 8 epochs at <run>/idm."""
    assert train_idm_main([f"checkpoint={run}", "epochs=8", *SMALL]) == 0
    return run


def one_error(capsys, prog):
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    return err


def test_training_lowers_heldout_loss_and_ties_the_idm_to_the_model(trained):
    from lewm_fast import LeWM

    log = json.loads((trained / "idm" / "train_idm.json").read_text())
    history = log["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9)) and log["horizon"] == 5
    payload = read_idm_file(trained / "idm")
    model = LeWM.from_pretrained(trained / "checkpoints" / "step_00000010")
    assert payload["model_hash"] == weights_hash(model)
    # the trained IDM's held-out loss is below the untrained one's (same initialisation seed)
    from lewm_fast.cli.train_idm import prepare
    from lewm_fast.config import compose_config

    parts = prepare(compose_config("train_idm", [f"checkpoint={trained}", *SMALL]))
    heldout = parts["heldout"]
    torch.manual_seed(0)
    untrained = GCIDM(model.latent_dim, model.action_dim, 32, 2, 5).eval()
    idm, meta = load_idm(trained / "idm", model)
    assert heldout_loss(idm, heldout) == pytest.approx(history[-1]["heldout_loss"], rel=1e-5)
    assert history[-1]["heldout_loss"] < heldout_loss(untrained, heldout)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert meta["env"] == "two_room" and meta["frameskip"] == 5


def test_resume_is_exact(run, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_idm_main([f"checkpoint={run}", f"out={full}", "epochs=3", *SMALL]) == 0
    assert train_idm_main([f"checkpoint={run}", f"out={split}", "epochs=1", *SMALL]) == 0
    assert train_idm_main([f"checkpoint={run}", f"out={split}", "epochs=3", *SMALL]) == 0
    a, b = read_idm_file(full), read_idm_file(split)
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=0)
    assert a["meta"]["history"] == b["meta"]["history"]


def test_idm_recovers_the_action_of_a_linear_latent_system(tmp_path):
    """z_{t+1} = z_t + B a_t: with K = 1 the executed action is a = B⁺ (z_{t+1} - z_t), which the IDM must learn."""
    g = torch.Generator().manual_seed(0)
    d, a, episodes, length = 8, 2, 40, 30
    mix = torch.randn(d, a, generator=g)
    latents, actions = [], []
    for _ in range(episodes):
        act = torch.randn(length, a, generator=g)
        z0 = torch.randn(1, d, generator=g)
        z = torch.cat([z0, z0 + torch.cumsum(act[:-1] @ mix.T, dim=0)])
        latents.append(z)
        actions.append(act)
    lengths = np.full(episodes, length)
    starts = np.arange(episodes) * length

    def pairs(lo, hi):
        data = EpisodeLatents(torch.cat(latents[lo:hi]).numpy(), torch.cat(actions[lo:hi]).numpy(),
                              starts[: hi - lo], lengths[lo:hi], np.arange(lo, hi))
        return HindsightPairs(data, ActionCodec([0.0] * a, [1.0] * a, 1, a), frameskip=1, horizon=1)

    train, test = pairs(0, 32), pairs(32, 40)
    meta = {"env": "linear", "frameskip": 1, "horizon": 1, "data": "synthetic"}
    settings = IDMTrainSettings(hidden=64, layers=2, epochs=40, batch_size=64, lr=3e-3, weight_decay=0.0)
    train_idm("synthetic", train, test, settings, tmp_path, meta, progress=False, log=lambda _: None)
    idm, _ = load_idm(tmp_path)
    assert heldout_loss(idm, test) < 0.05 * heldout_baseline(test)


def _latent_inputs(model, b=3, h=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, h, model.latent_dim, generator=g)
    hist = torch.randn(b, h - 1, model.action_dim, generator=g)
    goal = torch.randn(b, model.latent_dim, generator=g)
    return emb, hist, goal


def test_idm_cem_with_zero_iterations_returns_the_idm_plan(tiny_model):
    torch.manual_seed(1)
    idm = GCIDM(tiny_model.latent_dim, tiny_model.action_dim, 32, 2, horizon=4).eval()
    emb, hist, goal = _latent_inputs(tiny_model)
    init = IDMInit(tiny_model, idm, horizon=4)
    expected = idm_rollout(tiny_model, idm, emb, hist, goal, 4, torch.full((3,), 4))
    planner = CEMPlanner(tiny_model, num_samples=16, topk=4, n_steps=0, horizon=4, receding_horizon=2, backend="cpu",
                         seed=0, init=init)
    plan = planner.plan(emb, goal, hist, latent=True)
    torch.testing.assert_close(plan, expected, rtol=0, atol=0)
    torch.testing.assert_close(planner.act(emb, goal, hist, latent=True), expected[:, :2], rtol=0, atol=0)
    # with iterations, CEM starts from the IDM plan (candidate 0 of iteration 1) and refines it
    refined = CEMPlanner(tiny_model, num_samples=16, topk=4, n_steps=2, horizon=4, receding_horizon=2, backend="cpu",
                         seed=0, init=init).plan(emb, goal, hist, latent=True)
    assert refined.shape == expected.shape and not torch.equal(refined, expected)
    with pytest.raises(ValueError, match="n_steps=0 .* needs init"):
        CEMPlanner(tiny_model, num_samples=16, topk=4, n_steps=0, horizon=4, receding_horizon=2, backend="cpu")


def test_idm_rollout_first_block_is_one_forward_and_later_blocks_follow_the_predictor(tiny_model):
    torch.manual_seed(2)
    idm = GCIDM(tiny_model.latent_dim, tiny_model.action_dim, 32, 2, horizon=5).eval()
    emb, hist, goal = _latent_inputs(tiny_model, b=2)
    plan = idm_rollout(tiny_model, idm, emb, hist, goal, 3, torch.tensor([5, 2]))
    with torch.no_grad():
        first = idm(emb[:, -1], goal, torch.tensor([1.0, 0.4]))
        z1 = tiny_model.rollout(emb[:, None], hist[:, None], plan[:, None, :1])[:, 0, -1]
        second = idm(z1, goal, torch.tensor([0.8, 0.2]))  # k = 4 and max(2 - 1, 1) = 1, over K = 5
    torch.testing.assert_close(plan[:, 0], first)
    torch.testing.assert_close(plan[:, 1], second, rtol=1e-5, atol=1e-6)


def test_idm_policy_is_batched_over_envs_and_counts_down(tiny_model):
    torch.manual_seed(3)
    idm = GCIDM(tiny_model.latent_dim, tiny_model.action_dim, 32, 2, horizon=3).eval()
    emb, hist, goal = _latent_inputs(tiny_model, b=3)
    policy = IDMPolicy(tiny_model, idm)
    batched = [policy.act(emb, goal, hist, latent=True) for _ in range(4)]
    for e in range(3):
        single = IDMPolicy(tiny_model, idm)
        for step in range(4):
            torch.testing.assert_close(single.act(emb[e:e + 1], goal[e:e + 1], hist[e:e + 1], latent=True),
                                       batched[step][e:e + 1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # countdown: k = 3, 2, 1, then stays 1
        ks = [idm(emb[:, -1], goal, torch.full((3,), k / 3)) for k in (3, 2, 1, 1)]
    for got, want in zip(batched, ks):
        torch.testing.assert_close(got[:, 0], want)
    policy.reset(torch.tensor([True, False, False]))
    torch.testing.assert_close(policy.act(emb, goal, hist, latent=True)[:1, 0], ks[0][:1])
    with pytest.raises(ValueError, match="call reset"):
        policy.act(emb[:2], goal[:2], hist[:2], latent=True)


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_train_idm_bad_inputs(tmp_path, data, capsys):
    assert train_idm_main([f"checkpoint={tmp_path / 'missing'}"]) == 2
    one_error(capsys, "lewm-train-idm")
    other = make_run(tmp_path / "fs3", data, frameskip=3)  # 2-d actions x 3 = 6, the model takes 10-wide blocks
    assert train_idm_main([f"checkpoint={other}", *SMALL]) == 2
    assert re.search("2-d actions, x frameskip 3 = 6, but the model takes 10-wide", one_error(capsys, "lewm-train-idm"))
    assert train_idm_main([f"checkpoint={other}", f"data.path={tmp_path / 'none.h5'}"]) == 2
    assert "does not exist" in one_error(capsys, "lewm-train-idm")
    assert train_idm_main([f"checkpoint={other}", "hidden=0"]) == 2
    assert "hidden must be an integer >= 1" in one_error(capsys, "lewm-train-idm")


def test_an_idm_of_another_model_is_refused(trained, data, tmp_path, capsys):
    other = make_run(tmp_path / "other", data, seed=1)
    idm = trained / "idm"
    assert train_idm_main([f"checkpoint={other}", f"out={idm}", *SMALL]) == 2  # resume onto another model's IDM
    assert "trained on another world model" in one_error(capsys, "lewm-train-idm")
    common = ["episodes=1", "save_episodes=0", "goals=expert", "dataset=null", f"out={tmp_path / 'eval'}"]
    assert eval_main([f"checkpoint={other}", "planner=idm", f"planner.idm={idm}", *common]) == 2
    assert "trained on another world model" in one_error(capsys, "lewm-eval")
    assert eval_main([f"checkpoint={other}", "planner=idm_cem", *common]) == 2  # no <run>/idm
    assert "no GC-IDM checkpoint" in one_error(capsys, "lewm-eval")
    assert eval_main([f"checkpoint={trained}", "planner=idm", "viewer=true", *common]) == 2
    assert "planner=idm samples none" in one_error(capsys, "lewm-eval")
    assert eval_main([f"checkpoint={trained}", "planner=idm_cem", "planner.n_steps=-1", *common]) == 2
    assert "planner.n_steps must be an integer >= 0" in one_error(capsys, "lewm-eval")


def test_lewm_eval_plans_with_the_idm_and_idm_cem(trained, tmp_path):
    common = ["episodes=2", "save_episodes=0", "goals=expert", "dataset=null", "budget=10"]
    assert eval_main([f"checkpoint={trained}", "planner=idm", f"out={tmp_path / 'idm'}", *common]) == 0
    summary = json.loads((tmp_path / "idm" / "results.json").read_text())
    assert summary["planner"]["class"] == "IDMPolicy" and summary["plans"] >= 2
    small = ["planner.num_samples=8", "planner.topk=2", "planner.n_steps=1"]
    assert eval_main([f"checkpoint={trained}", "planner=idm_cem", *small, f"out={tmp_path / 'cem'}", *common]) == 0
    assert json.loads((tmp_path / "cem" / "results.json").read_text())["planner"]["kind"] == "idm_cem"


def test_idm_onnx_matches_pytorch_and_is_described_in_the_manifest(trained, data, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from lewm_fast import LeWM
    from lewm_fast.export import export_onnx
    from lewm_fast.export.onnx import ExportError

    manifest = export_onnx(trained, tmp_path / "web", action_bounds="none")  # picks up <run>/idm
    entry = manifest["idm"]
    assert entry["file"] == "idm.onnx" and entry["horizon"] == 5 and entry["outputs"]["block"] == ["batch", 10]
    model = LeWM.from_pretrained(trained / "checkpoints" / "step_00000010")
    idm, _ = load_idm(trained / "idm", model)
    g = torch.Generator().manual_seed(0)
    z, goal = torch.randn(3, model.latent_dim, generator=g), torch.randn(3, model.latent_dim, generator=g)
    remaining = torch.tensor([1.0, 0.6, 0.2])
    sess = ort.InferenceSession(str(tmp_path / "web" / "idm.onnx"), providers=["CPUExecutionProvider"])
    (block,) = sess.run(None, {"z": z.numpy(), "goal": goal.numpy(), "remaining": remaining.numpy()})
    np.testing.assert_allclose(block, idm(z, goal, remaining).detach().numpy(), rtol=1e-4, atol=1e-5)
    other = make_run(tmp_path / "other", data, seed=1)
    assert "idm" not in export_onnx(other, tmp_path / "plain", action_bounds="none")  # no IDM, no entry
    with pytest.raises(ExportError, match="another world model"):
        export_onnx(other, tmp_path / "bad", action_bounds="none", idm=trained / "idm")


def test_web_site_is_exported_again_when_the_runs_idm_changes(data, tmp_path):
    """lewm-fast web reuses a site folder only while the run's default IDM (or its absence) is the one exported."""
    pytest.importorskip("onnxruntime")
    from lewm_fast import LeWM
    from lewm_fast.export.onnx import ExportError
    from lewm_fast.io.idm import save_idm
    from lewm_fast.web.site import build_site

    run = make_run(tmp_path / "run", data)
    try:
        assert "idm" not in build_site(run, tmp_path / "site")
    except ExportError as exc:  # onnxruntime-web not installed (npm ci)
        pytest.skip(str(exc))
    exported = (tmp_path / "site" / "encoder.onnx").stat().st_mtime_ns
    assert "idm" not in build_site(run, tmp_path / "site")
    assert (tmp_path / "site" / "encoder.onnx").stat().st_mtime_ns == exported  # reused
    model = LeWM.from_pretrained(run / "checkpoints" / "step_00000010")
    save_idm(run / "idm", GCIDM(model.latent_dim, model.action_dim, hidden=8, layers=1), weights_hash(model),
             {"env": "two_room", "frameskip": 5, "env_action_dim": 2, "horizon": 5})
    manifest = build_site(run, tmp_path / "site")  # the run now has an IDM: exported again, with idm.onnx
    assert manifest["idm"]["file"] == "idm.onnx" and (tmp_path / "site" / "idm.onnx").is_file()
    assert (tmp_path / "site" / "encoder.onnx").stat().st_mtime_ns != exported


def test_the_shipped_idm_belongs_to_the_shipped_model():
    """lewm_fast/assets/two_room/idm: lewm-train-idm's checkpoint of the shipped Two-Room model (weights hash), weights
    only, for its 5 x 2-d action blocks."""
    from lewm_fast import LeWM
    from lewm_fast.assets import DEFAULT_MODEL
    from lewm_fast.io.idm import load_idm, read_idm_file

    if not (DEFAULT_MODEL / "idm" / "idm.pt").is_file():
        pytest.skip("the shipped model is not in this checkout")
    model = LeWM.from_pretrained(DEFAULT_MODEL)
    net, meta = load_idm(DEFAULT_MODEL / "idm", model)
    assert (meta["env"], meta["frameskip"], meta["env_action_dim"], net.horizon) == ("two_room", 5, 2, 5)
    assert read_idm_file(DEFAULT_MODEL / "idm")["train_state"] is None
    assert not Path(meta["data"]).is_absolute()
