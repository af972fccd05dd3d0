"""lewm_fast.analysis and lewm-analyze: probes recover what is linear in the latent and nothing from shuffled targets,
surprise is exact where the prediction is and flags a planted jump, perturbations edit the simulator (not the pixels),
the planning recorder leaves the episode unchanged and its HTML viewer holds every step, and bad inputs fail with one
clear line."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch import nn

from lewm_fast import CEMPlanner, build_model
from lewm_fast.analysis import (
    LatentProjection,
    PlanRecorder,
    detection,
    latent_map,
    plot_latent_map,
    plot_probe,
    plot_surprise,
    probe,
    probe_latents,
    read_quantities,
    surprise,
    surprise_trace,
    write_viewer,
)
from lewm_fast.analysis.perturb import PERTURBATIONS, Perturbation, simulate
from lewm_fast.analysis.report import write_json
from lewm_fast.analysis.sources import load_episodes
from lewm_fast.cli.analyze import main as analyze_main
from lewm_fast.data import ActionCodec, collect
from lewm_fast.data.latents import encode_frames, to_model_input
from lewm_fast.evaluation import ExpertGoals, run_episode
from lewm_fast.io import NORMALIZATION

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 28  # frame side of the generated data and of the tiny model's input


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six 40-step Two-Room episodes at 28 px (9 frames each at frameskip 5)."""
    return collect("two_room", 6, tmp_path_factory.mktemp("data") / "tr.h5", episode_len=40, image_size=SIZE,
                   progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random LeWM for 28 px frames, saved as lewm-train saves one (model folder + normalization.json)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(image_size=SIZE, patch_size=14)).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "step_00000001"
    model.save_pretrained(folder)
    norm = {"env": "two_room", "frameskip": 5, "action": {"mean": [0.0, 0.0], "std": [0.6, 0.6]}}
    (folder / NORMALIZATION).write_text(json.dumps(norm))
    return folder


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = analyze_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *args) -> str:
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and err.startswith("lewm-analyze: error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- probes ---------------------------------------------------------------------------------------------------------
def test_probe_recovers_linear_quantity_and_not_shuffled_targets(data):
    torch.manual_seed(0)
    model = build_model(tiny_config(image_size=SIZE, patch_size=14)).eval()
    eps = load_episodes(data)
    latents = encode_frames(model, np.concatenate(eps.frames))
    groups = np.repeat(eps.ids, [len(f) for f in eps.frames])
    target = latents @ np.random.default_rng(0).standard_normal((latents.shape[1], 1))
    linear = probe_latents(latents, target, groups, ["linear"], test_fraction=0.34, mlp_epochs=20)
    assert linear["linear"]["linear"]["r2"] > 0.999 and linear["linear"]["linear"]["pearson"] > 0.999
    shuffled = probe_latents(latents, target[np.random.default_rng(1).permutation(len(target))], groups, ["shuffled"],
                             test_fraction=0.34, mlp_epochs=20)
    assert abs(shuffled["linear"]["shuffled"]["r2"]) < 0.2 and shuffled["mlp"]["shuffled"]["r2"] < 0.2
    # the reported linear map is the fitted probe, in latent units
    w, b = linear["linear_map"]["weight"], linear["linear_map"]["bias"]
    test = np.isin(groups, linear["test_groups"])
    np.testing.assert_allclose(latents[test] @ w + b, linear["test"]["linear"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(latents @ w + b, target, atol=1e-2 * np.abs(target).max())


def test_probe_end_to_end_and_cli(data, checkpoint, tmp_path, capsys):
    result = probe(checkpoint, data, mlp_epochs=3)
    assert result["env"] == "two_room" and result["quantities"] == ["agent_x", "agent_y"]
    assert set(result["models"]) == {"trained", "random"}
    for res in result["models"].values():
        assert not set(res["train_groups"]) & set(res["test_groups"])  # split by episode
        assert set(res["linear"]["agent_x"]) == {"r2", "pearson", "mse"}
    plot_probe(result, tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 1000
    rc, out, _ = cli(capsys, "probe", f"checkpoint={checkpoint}", f"data={data}", "mlp_epochs=2", "baseline=false",
                     f"out={tmp_path / 'cli'}")
    assert rc == 0 and "agent_y" in out
    saved = json.loads((tmp_path / "cli" / "probe.json").read_text())
    assert "test" not in saved["models"]["trained"] and len(saved["models"]["trained"]["linear_map"]["weight"]) == 32
    assert (tmp_path / "cli" / "probe.png").is_file()


# ---- surprise -------------------------------------------------------------------------------------------------------
class PersistenceModel(nn.Module):
    """Latent = mean colour of the frame; predicts that the next latent equals the current one (exact on a still
    scene, wrong only where the scene jumps)."""

    history_size, latent_dim = 3, 3

    def encode(self, pixels, action):
        return pixels.mean(dim=(-1, -2)), torch.zeros_like(action)

    def predict(self, emb, act_emb):
        return emb


def test_surprise_is_exact_except_at_a_planted_jump():
    model, rng = PersistenceModel(), np.random.default_rng(0)
    events, clean = [], []
    for _ in range(5):
        pixels = torch.full((12, 3, 4, 4), float(rng.normal()))
        jumped, k = pixels.clone(), int(rng.integers(2, 11))
        jumped[k:] += 1.0 + rng.random()
        actions = torch.zeros(12, 2)
        clean.append(surprise_trace(model, pixels, actions))
        events.append((surprise_trace(model, jumped, actions), k))
        assert np.isnan(clean[-1][0]) and np.all(clean[-1][1:] == 0)
        trace = events[-1][0]
        assert trace[k] > 0 and np.all(np.delete(trace[1:], k - 1) == 0)
    assert detection(events, clean)["auroc"] == 1.0


def test_surprise_trace_matches_a_direct_window_prediction(data):
    model = build_model(tiny_config(image_size=SIZE, patch_size=14)).eval()
    pixels, actions = to_model_input(load_episodes(data, 1).frames[0][::5], SIZE), torch.randn(9, 10)
    trace = surprise_trace(model, pixels, actions)
    with torch.no_grad():
        emb, act = model.encode(pixels[None], actions[None])
        for t in (1, 2, 3, 6, 8):
            lo = max(0, t - model.history_size)
            pred = model.predict(emb[:, lo:t], act[:, lo:t])[0, -1]
            assert trace[t] == pytest.approx(float((pred - emb[0, t]).square().sum()), rel=1e-4)


def test_perturbations_edit_the_simulator(data):
    from lewm_fast.envs import make

    eps, env, rng = load_episodes(data, 1), make("two_room", image_size=SIZE), np.random.default_rng(0)
    states, actions, frames = eps.state[0], eps.action[0], eps.frames[0]
    replay = simulate(env, Perturbation(), states, actions, 10, 4, 5, rng)  # no edit: the recorded frames again
    np.testing.assert_array_equal(replay, frames[10:30:5])
    for kind, p in PERTURBATIONS["two_room"].items():
        changed = simulate(env, p, states, actions, 10, 2, 5, rng)
        assert np.abs(changed[0].astype(int) - frames[10]).max() > 50, kind
    from lewm_fast.envs import two_room

    assert two_room.AGENT_RGB.tolist() == [255, 0, 0]  # the colour patch is undone


def test_surprise_end_to_end_and_cli(data, checkpoint, tmp_path, capsys):
    result = surprise(checkpoint, data, episodes=2)
    assert set(result["kinds"]) == {"teleport", "colour", "pass_through"} and not result["skipped"]
    assert len(result["traces"]) == 6 and 0.0 <= result["overall"]["auroc"] <= 1.0
    for r in result["traces"]:
        assert 3 <= r["event"] < len(r["clean"]) - 1 and np.isfinite(r["perturbed"][1:]).all()
        np.testing.assert_array_equal(r["perturbed"][: r["event"]], r["clean"][: r["event"]])
    plot_surprise(result, tmp_path / "surprise.png")
    rc, out, _ = cli(capsys, "surprise", f"checkpoint={checkpoint}", f"data={data}", "episodes=1", "kinds=[teleport]",
                     f"out={tmp_path / 'cli'}")
    assert rc == 0 and "teleport" in out and (tmp_path / "cli" / "surprise.png").is_file()
    assert json.loads((tmp_path / "cli" / "surprise.json").read_text())["kinds"]["teleport"]["events"] == 1


def test_surprise_counts_the_episodes_it_uses(data, checkpoint, tmp_path, capsys):
    """Episode 4 of the data ends at its target after 23 steps: 5 frames at frameskip 5, fewer than the
    history_size + 3 = 6 a trace needs. The result and the printed line say which episodes were used."""
    rc, out, _ = cli(capsys, "surprise", f"checkpoint={checkpoint}", f"data={data}", "episodes=6", "kinds=[teleport]",
                     f"out={tmp_path}")
    assert rc == 0
    assert out.splitlines()[0] == ("two_room: surprise on 5 episodes (frameskip 5); left out 1 of the 6 episodes read "
                                   "(fewer than 6 frames): 4")
    saved = json.loads((tmp_path / "surprise.json").read_text())
    assert saved["episodes"] == [0, 1, 2, 3, 5] and saved["short_episodes"] == [4] and saved["min_frames"] == 6
    assert sorted({t["episode"] for t in saved["traces"]}) == saved["episodes"]


def test_probe_plot_is_readable(tmp_path):
    """At least 800 px wide for two quantities, R^2 to 3 decimals (0.998 is not rounded to 1.00)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 2))
    res = {"test": {"true": true, "linear": true, "mlp": true},
           **{k: {q: {"r2": 0.998, "pearson": 0.999, "mse": 0.01} for q in ("x", "y")} for k in ("linear", "mlp")}}
    titles = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.set_title
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "set_title",
                   lambda ax, text, **kw: titles.append(text) or original(ax, text, **kw))
        path = plot_probe({"env": "two_room", "quantities": ["x", "y"], "models": {"trained": res}}, tmp_path / "p.png")
    assert Image.open(path).size[0] >= 800
    assert titles and all("trained 0.998" in t for t in titles)


# ---- latent map -----------------------------------------------------------------------------------------------------
def test_latent_map_and_cli(data, checkpoint, tmp_path, capsys):
    result = latent_map(checkpoint, data, quantity="agent_y", method="pca", highlight=2)
    lengths = [len(f) for f in load_episodes(data).frames]
    assert result["coords"].shape == (sum(lengths), 2) and result["value"].shape == (sum(lengths),)
    assert result["method"] == "pca" and result["step"].max() == max(lengths) - 1 and result["highlight"] == 2
    plot_latent_map(result, tmp_path / "latents.png")
    rc, out, _ = cli(capsys, "latents", f"checkpoint={checkpoint}", f"data={data}", "every=4", f"out={tmp_path}")
    assert rc == 0 and "latent map" in out and (tmp_path / "latents.json").is_file()


# ---- planning viewer ------------------------------------------------------------------------------------------------
class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in = dict(attrs).get("id") if tag == "script" else None

    def handle_data(self, text):
        if self._in == "data":
            self.scripts.append(text)


def test_recorder_leaves_the_episode_unchanged_and_viewer_holds_every_step(tmp_path):
    from lewm_fast.envs import make, make_policy

    model = build_model(tiny_config(image_size=SIZE, patch_size=14)).eval()
    codec = ActionCodec([0.0, 0.0], [0.6, 0.6], frameskip=5, action_dim=2)

    def episode(recorded: bool):
        env = make("two_room", image_size=SIZE, seed=0)
        goals = ExpertGoals(env, make_policy("two_room", env, kind="expert", seed=0), goal_offset=15)
        planner = CEMPlanner(model, num_samples=12, topk=3, n_steps=2, receding_horizon=1, seed=0)
        rec = PlanRecorder(planner, env_name="two_room", max_candidates=6) if recorded else None
        result = run_episode(rec.watch(env) if rec else env, goals, rec or planner, model, codec, episode=0, seed=7,
                             budget=12, record=True)
        return result, rec, goals

    plain, _, _ = episode(False)
    result, rec, goals = episode(True)
    assert result.steps == plain.steps == 12
    np.testing.assert_array_equal(np.stack(result.frames), np.stack(plain.frames))  # same actions, same frames
    record = rec.record(goal_state=goals(7)[1])
    assert len(record["steps"]) == 13 and len(record["replans"]) == 3 and record["projection"] == "pca"
    assert all(r["reproduced"] for r in record["replans"])
    assert [len(it["paths"]) for r in record["replans"] for it in r["iterations"]] == [6] * 6
    path = write_viewer(tmp_path / "viewer.html", record)
    assert path.stat().st_size < 3e6
    parser = _Collector()
    parser.feed(path.read_text())
    assert {"html", "canvas", "script"} <= set(parser.tags)
    shown = json.loads("".join(parser.scripts).replace("<\\/", "</"))
    assert [s["frame"][:15] for s in shown["steps"]] == ["data:image/png;"] * 13
    assert [s["replan"] for s in shown["steps"]] == [0] * 5 + [1] * 5 + [2] * 3


def test_recorder_with_a_probe_plane(data, checkpoint, tmp_path):
    result = probe(checkpoint, data, mlp_epochs=1, baseline=False)
    write_json(tmp_path / "probe.json", result, drop=("test",))
    projection = LatentProjection.from_probe(tmp_path / "probe.json")
    assert projection.axes == ("agent_x", "agent_y") and projection.weight.shape == (32, 2)
    model = build_model(tiny_config(image_size=SIZE, patch_size=14)).eval()
    PlanRecorder(CEMPlanner(model, num_samples=4, topk=2, n_steps=1), projection, env_name="two_room")
    other = build_model(tiny_config(image_size=SIZE, patch_size=14, latent_dim=16)).eval()
    with pytest.raises(ValueError, match="maps 32-d latents, but the model's latent size is 16"):
        PlanRecorder(CEMPlanner(other, num_samples=4, topk=2, n_steps=1), projection)


# ---- bad inputs -----------------------------------------------------------------------------------------------------
def test_bad_inputs_fail_with_one_clear_line(data, checkpoint, capsys, tmp_path):
    err = one_line_error(capsys, "probe", f"checkpoint={checkpoint}", f"data={data}", "quantities=[block_x]")
    assert "two_room data has no quantity 'block_x'; its quantities are agent_x, agent_y" in err
    assert "data is required" in one_line_error(capsys, "surprise", f"checkpoint={checkpoint}")
    assert "does not exist" in one_line_error(capsys, "latents", f"checkpoint={checkpoint}", f"data={tmp_path}/x.h5")
    assert "unknown key 'bogus'" in one_line_error(capsys, "probe", f"checkpoint={checkpoint}", f"data={data}", "bogus=1")
    assert "unknown command 'probes'" in one_line_error(capsys, "probes")
    assert "neither a checkpoint folder" in one_line_error(capsys, "probe", f"checkpoint={tmp_path}", f"data={data}")
    assert "unknown perturbation kind 'melt'" in one_line_error(capsys, "surprise", f"checkpoint={checkpoint}",
                                                                f"data={data}", "kinds=[melt]")
    assert "none of the perturbation kinds asked for" in one_line_error(capsys, "surprise", f"checkpoint={checkpoint}",
                                                                       f"data={data}", "kinds=[]")
    with pytest.raises(ValueError, match="no simulator states"):
        read_quantities("two_room", ["agent_x"], np.zeros((3, 0)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="states are 7-wide, but two_room's quantity table reads"):
        read_quantities("two_room", ["agent_x"], np.zeros((3, 7)), np.zeros((3, 2)))
    assert re.search(r"usage: lewm-analyze <command>", cli(capsys)[1])
