"""lewm-fast export-onnx: encoder.onnx and planner.onnx run by onnxruntime (CPU) equal the reference PyTorch modules
(LeWM.encode, LeWM.rollout + goal_mse_cost) within 1e-4 on random and real inputs, a CEM driven by planner.onnx plans
what the reference CEMSolver plans for the same seed, the manifest records what the page needs, and checkpoints that
cannot be exported fail with one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lewm_fast import build_model
from lewm_fast.assets import DEFAULT_MODEL
from lewm_fast.cli.collect import main as collect_main
from lewm_fast.cli.info import main as cli_main
from lewm_fast.envs import make
from lewm_fast.export.onnx import PCA_FILE, checkpoint_hash, env_geometry
from lewm_fast.io import NORMALIZATION
from lewm_fast.reference import CEMSolver
from lewm_fast.reference.cem import goal_mse_cost
from lewm_fast.reference.vit import preprocess_frames

from conftest import randomize_, tiny_config

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ort = pytest.importorskip("onnxruntime") if not IN_CI else __import__("onnxruntime")
ACTION_MEAN, ACTION_STD = [0.05, -0.02], [0.6, 0.5]
TOL = dict(rtol=1e-5, atol=1e-4)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "two_room.h5"
    assert collect_main(["env=two_room", "episodes=3", "image_size=28", f"out={path}", "progress=false"]) == 0
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, episodes) -> Path:
    """A tiny LeWM with non-trivial weights for 28 px Two-Room frames, saved as lewm-train saves it."""
    torch.manual_seed(0)
    model = randomize_(build_model(tiny_config(image_size=28, patch_size=14))).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "step_00000010"
    model.save_pretrained(folder)
    norm = {"env": "two_room", "frameskip": 5, "action": {"mean": ACTION_MEAN, "std": ACTION_STD},
            "data": {"path": str(episodes), "held_out_episodes": [2]}}
    (folder / NORMALIZATION).write_text(json.dumps(norm))
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    assert cli_main(["export-onnx", f"checkpoint={checkpoint}", f"out={out}", "action_bounds=none"]) == 0
    return out


def session(folder: Path, name: str):
    return ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])


def planner_inputs(sess, context, history, candidates, goal) -> dict:
    feeds = {"context": context, "action_history": history, "candidates": candidates, "goal": goal}
    return {i.name: np.ascontiguousarray(feeds[i.name], dtype=np.float32) for i in sess.get_inputs()}


def env_frames(size: int, count: int, seed: int = 0) -> np.ndarray:
    env, rng = make("two_room", image_size=size, terminate_at_target=False), np.random.default_rng(seed)
    env.reset(seed=seed)
    return np.stack([env.step(rng.uniform(-1, 1, 2))[0]["pixels"] for _ in range(count)])


def reference_costs(model, context, history, candidates, goal, bounds=None):
    """The reference rollout from one context for every candidate, and the goal cost after each block; with the
    manifest's ``bounds`` applied as its note says (clip: candidates clamped; penalty: added over blocks 1..t+1)."""
    n = candidates.shape[0]
    mode = "none" if bounds is None else bounds["mode"]
    if mode != "none":
        low, high = torch.tensor(bounds["low"]), torch.tensor(bounds["high"])
    if mode == "clip":
        candidates = candidates.clamp(low, high)
    with torch.no_grad():
        latents = model.rollout(context.expand(1, n, *context.shape), history.expand(1, n, *history.shape),
                                candidates.unsqueeze(0))[0]
    costs = torch.stack([goal_mse_cost(latents[None, :, t], goal[None])[0]
                         for t in range(context.shape[0], latents.shape[1])], dim=1)
    if mode == "penalty":
        excess = (candidates - high).clamp_min(0) + (low - candidates).clamp_min(0)
        costs = costs + bounds["weight"] * excess.square().sum(-1).cumsum(1)
    return costs, latents


def check_graphs(model, folder: Path, frames: np.ndarray, history: int) -> None:
    """encoder.onnx and planner.onnx against the reference on ``frames`` (real) and random frames / candidates."""
    enc, plan = session(folder, "encoder.onnx"), session(folder, "planner.onnx")
    rng = np.random.default_rng(0)
    random_frames = rng.integers(0, 256, frames.shape, dtype=np.uint8)
    for batch in (frames, random_frames, frames[:1]):
        with torch.no_grad():
            want = model.encode(preprocess_frames(torch.from_numpy(batch)).unsqueeze(1))[:, 0]
        got = enc.run(None, {"frames": batch})[0]
        torch.testing.assert_close(torch.from_numpy(got), want, **TOL)
    manifest = json.loads((folder / "manifest.json").read_text())
    horizon, a = manifest["model"]["horizon"], model.action_dim
    latents = torch.from_numpy(enc.run(None, {"frames": frames})[0])
    context, goal = latents[:history], latents[-1]
    action_history = torch.from_numpy(rng.uniform(-1, 1, (history - 1, a)).astype(np.float32))
    for candidates in (torch.randn(37, horizon, a), torch.from_numpy(rng.uniform(-2, 2, (300, horizon, a))).float()):
        want_costs, want_latents = reference_costs(model, context, action_history, candidates, goal,
                                                   manifest.get("action_bounds"))
        got_costs, got_latents = plan.run(None, planner_inputs(plan, context, action_history, candidates, goal))
        torch.testing.assert_close(torch.from_numpy(got_latents), want_latents, **TOL)
        torch.testing.assert_close(torch.from_numpy(got_costs), want_costs, **TOL)


def test_graphs_match_pytorch(checkpoint, exported, episodes):
    from lewm_fast.data import load_episode
    from lewm_fast.reference.lewm import LeWM

    model = LeWM.from_pretrained(checkpoint)
    check_graphs(model, exported, load_episode(episodes, 0)["pixels"][:6], history=1)
    check_graphs(model, exported, env_frames(28, 5), history=1)


class OnnxCostCEM(CEMSolver):
    """The reference CEMSolver with its candidate costs from planner.onnx (batch 1)."""

    def __init__(self, model, plan_session, **kwargs):
        super().__init__(model, **kwargs)
        self.plan_session = plan_session

    def costs(self, emb_ctx, action_history, goal_emb, candidates):
        feeds = planner_inputs(self.plan_session, emb_ctx[0], action_history[0], candidates[0], goal_emb[0])
        return torch.from_numpy(self.plan_session.run(["costs"], feeds)[0][:, -1]).unsqueeze(0)


def test_cem_on_planner_onnx_plans_as_the_reference(checkpoint, exported):
    from lewm_fast.reference.lewm import LeWM

    model = LeWM.from_pretrained(checkpoint)
    enc = session(exported, "encoder.onnx")
    frames = env_frames(28, 2, seed=3)
    latents = torch.from_numpy(enc.run(None, {"frames": frames})[0])
    obs, goal = latents[:1].unsqueeze(0), latents[1:]
    settings = dict(num_samples=64, topk=8, n_steps=4, horizon=5, receding_horizon=1, seed=7)
    want, want_diag = CEMSolver(model, **settings).plan(obs, goal, latent=True, return_diagnostics=True)
    got, got_diag = OnnxCostCEM(model, session(exported, "planner.onnx"), **settings).plan(
        obs, goal, latent=True, return_diagnostics=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(got_diag.elite_costs), torch.stack(want_diag.elite_costs), **TOL)


def test_manifest(checkpoint, exported, episodes):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == checkpoint_hash(checkpoint)
    assert manifest["opset"] >= 17 and manifest["model"] == {
        "image_size": 28, "latent_dim": 32, "action_block": 10, "env_action_dim": 2, "frameskip": 5, "window": 3,
        "history": 1, "horizon": 5}
    assert manifest["action"]["mean"] == ACTION_MEAN * 5 and manifest["action"]["std"] == ACTION_STD * 5
    assert manifest["env"] == json.loads(json.dumps(env_geometry("two_room")))
    assert manifest["env"]["constants"]["SPEED"] == make("two_room").unwrapped.speed
    assert manifest["action_bounds"]["mode"] == "none" and len(manifest["action_bounds"]["low"]) == 10
    pca = manifest["pca"]
    assert pca["source"] == str(episodes.resolve()) and np.array(pca["components"]).shape == (2, 32)
    assert np.array(pca["points"]).shape[1] == 4 and json.loads((exported / PCA_FILE).read_text()) == pca
    for name, info in manifest["files"].items():
        assert info["bytes"] == (exported / name).stat().st_size


@pytest.mark.parametrize("mode", ["clip", "penalty"])
def test_planner_graph_applies_the_action_bounds(checkpoint, episodes, tmp_path, mode):
    """The env box [-1, 1] in normalised block units in the manifest; planner.onnx clamps (clip) or adds the
    penalty of blocks 1..t+1 (penalty) like the reference does."""
    from lewm_fast.reference.lewm import LeWM

    out = tmp_path / mode
    assert cli_main(["export-onnx", f"checkpoint={checkpoint}", f"out={out}", f"action_bounds={mode}",
                     "bounds_weight=3"]) == 0
    bounds = json.loads((out / "manifest.json").read_text())["action_bounds"]
    assert bounds["mode"] == mode and bounds["weight"] == 3.0
    mean, std = np.array(ACTION_MEAN * 5), np.array(ACTION_STD * 5)
    np.testing.assert_allclose(bounds["low"], (-1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(bounds["high"], (1 - mean) / std, rtol=1e-6)
    check_graphs(LeWM.from_pretrained(checkpoint), out, env_frames(28, 5), history=1)


@pytest.mark.skipif(not (DEFAULT_MODEL / "weights.pt").is_file(), reason="the shipped model is not in this checkout")
def test_shipped_model_exports_with_history(tmp_path):
    """The shipped model, H = 3 context frames; without its training file, the PCA comes from its latent_pca.json."""
    from lewm_fast.reference.lewm import LeWM

    shipped = tmp_path / "two_room"
    shutil.copytree(DEFAULT_MODEL, shipped)
    norm = json.loads((shipped / NORMALIZATION).read_text())
    norm["data"]["path"] = str(tmp_path / "moved.h5")
    (shipped / NORMALIZATION).write_text(json.dumps(norm))
    out = tmp_path / "onnx"
    assert cli_main(["export-onnx", f"checkpoint={shipped}", f"out={out}", "history=3", "horizon=4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pca"] == json.loads((DEFAULT_MODEL / PCA_FILE).read_text())
    assert manifest["model"]["history"] == 3 and manifest["model"]["horizon"] == 4
    check_graphs(LeWM.from_pretrained(DEFAULT_MODEL), out, env_frames(64, 4, seed=1), history=3)


def error_of(capsys, *args: str) -> str:
    assert cli_main(["export-onnx", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lewm-fast: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input(checkpoint, tmp_path, capsys):
    out = f"out={tmp_path / 'out'}"
    assert "missing required argument(s): out=..." in error_of(capsys, f"checkpoint={checkpoint}")
    assert "unknown key 'horizn'" in error_of(capsys, f"checkpoint={checkpoint}", out, "horizn=3")
    assert "horizon must be an integer" in error_of(capsys, f"checkpoint={checkpoint}", out, "horizon=x")
    assert "action_bounds must be one of" in error_of(capsys, f"checkpoint={checkpoint}", out, "action_bounds=box")
    assert "bounds_weight must be a number" in error_of(capsys, f"checkpoint={checkpoint}", out, "bounds_weight=x")
    assert "bounds_weight must be >= 0" in error_of(capsys, f"checkpoint={checkpoint}", out, "bounds_weight=-2")
    assert "neither a checkpoint folder" in error_of(capsys, f"checkpoint={tmp_path}", out)
    assert "history must be in [1, 3]" in error_of(capsys, f"checkpoint={checkpoint}", out, "history=4")
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / NORMALIZATION).unlink()
    assert "no normalization.json" in error_of(capsys, f"checkpoint={bare}", out)
    (bare / NORMALIZATION).write_text(json.dumps({"env": "two_room", "frameskip": 5,
                                                  "action": {"mean": ACTION_MEAN, "std": ACTION_STD}}))
    assert "no training data for the latent PCA" in error_of(capsys, f"checkpoint={bare}", out)
    assert "data=nope.h5 does not exist" in error_of(capsys, f"checkpoint={bare}", out, "data=nope.h5")
    weights = torch.load(bare / "weights.pt")
    weights[next(iter(weights))] = weights[next(iter(weights))] * float("nan")
    torch.save(weights, bare / "weights.pt")
    assert "non-finite weights" in error_of(capsys, f"checkpoint={bare}", out)
    (bare / "weights.pt").write_bytes(b"not a checkpoint")
    assert "cannot export" in error_of(capsys, f"checkpoint={bare}", out)
