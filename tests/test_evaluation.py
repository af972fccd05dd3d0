"""lewm-eval: the MPC loop reaches a held-out goal when given the expert's actions, runs end to end with CEMPlanner
on a tiny checkpoint (CLI included), writes results.json, PNG strips and GIFs, and fails clearly on bad input."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lewm_fast import build_model
from lewm_fast.cli.evaluate import main as eval_main
from lewm_fast.data import ActionCodec
from lewm_fast.evaluation import ExpertGoals, render_state, run_episode, summarize
from lewm_fast.io import NORMALIZATION

from conftest import tiny_config

ACTION_MEAN, ACTION_STD = [0.05, -0.02], [0.6, 0.5]
SMALL_PLANNER = ["planner.num_samples=12", "planner.topk=3", "planner.n_steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random LeWM for 28 px Two-Room frames, saved as lewm-train does (model folder + normalization.json)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(image_size=28, patch_size=14)).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "step_00000010"
    model.save_pretrained(folder)
    norm = {"env": "two_room", "frameskip": 5, "action": {"mean": ACTION_MEAN, "std": ACTION_STD}}
    (folder / NORMALIZATION).write_text(json.dumps(norm))
    return folder


@pytest.fixture
def env():
    from lewm_fast.envs import make

    return make("two_room", image_size=28, seed=0)


def expert(env, seed=0):
    from lewm_fast.envs import make_policy

    return make_policy("two_room", env, kind="expert", seed=seed)


class RecordingPolicy:
    """Wraps the expert and remembers the (clipped) actions of the held-out trajectory."""

    def __init__(self, policy):
        self.policy, self.actions = policy, []

    def reset(self, seed=None):
        self.policy.reset(seed=seed)
        self.actions = []

    def act(self, obs):
        action = self.policy.act(obs)
        self.actions.append(np.clip(action, -1.0, 1.0))
        return action


class ReplayPlanner:
    """A planner stand-in that returns the recorded expert actions, block after block (zeros after they run out)."""

    def __init__(self, recorder, codec, horizon=5):
        self.recorder, self.codec, self.horizon, self.block = recorder, codec, horizon, 0
        self.calls = []

    def reset(self):
        self.block = 0

    def act(self, obs, goal, action_history):
        self.calls.append((tuple(obs.shape), tuple(action_history.shape)))
        fs, acts = self.codec.frameskip, self.recorder.actions
        blocks = []
        for b in range(self.block, self.block + self.horizon):
            chunk = acts[b * fs : (b + 1) * fs]
            blocks.append(self.codec.to_model(np.stack(chunk)) if len(chunk) == fs else torch.zeros(fs * 2))
        self.block += self.horizon
        return torch.stack(blocks).unsqueeze(0)


class ZeroPlanner(ReplayPlanner):
    def act(self, obs, goal, action_history):
        return self.codec.to_model(np.zeros((5, 2))).expand(1, self.horizon, -1)


def test_action_codec_round_trip_and_layouts():
    codec = ActionCodec(ACTION_MEAN, ACTION_STD, frameskip=5, action_dim=2)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 2))
    block = codec.to_model(actions)
    assert block.shape == (10,) and block.dtype == torch.float32
    np.testing.assert_allclose(codec.to_env(block), actions, atol=1e-6)
    np.testing.assert_allclose(codec.to_env(torch.zeros(10)), np.tile(ACTION_MEAN, (5, 1)))
    per_block = ActionCodec(np.tile(ACTION_MEAN, 5), np.tile(ACTION_STD, 5), frameskip=5, action_dim=2)
    np.testing.assert_allclose(per_block.to_env(block), actions, atol=1e-6)
    with pytest.raises(ValueError, match="2 \\(per env action\\) or 10 \\(per block\\)"):
        ActionCodec([0.0] * 3, [1.0] * 3, frameskip=5, action_dim=2)
    with pytest.raises(ValueError, match="std must be > 0"):
        ActionCodec([0.0, 0.0], [1.0, 0.0], frameskip=5, action_dim=2)


def test_held_out_goal_is_reached_by_replaying_the_expert(env, checkpoint):
    from lewm_fast import LeWM

    model = LeWM.from_pretrained(checkpoint)
    codec = ActionCodec(ACTION_MEAN, ACTION_STD, frameskip=5, action_dim=2)
    start, goal = ExpertGoals(env, expert(env), goal_offset=25)(seed=3)
    np.testing.assert_array_equal(env.unwrapped.get_state(), start)  # left at the start
    assert not np.array_equal(render_state(env, goal), env.render())
    np.testing.assert_array_equal(env.unwrapped.get_state(), start)  # rendering the goal does not move the env

    for seed in range(3):
        recorder = RecordingPolicy(expert(env))
        planner = ReplayPlanner(recorder, codec)
        r = run_episode(env, ExpertGoals(env, recorder, 25), planner, model, codec, episode=seed, seed=seed, budget=50,
                        record=True)
        assert r.success and 1 <= r.steps <= 25, r
        assert len(r.frames) == r.steps + 1 and len(r.plan_latencies_s) == len(planner.calls)
        # context grows one frame per executed block, up to the model's window, with H-1 action blocks
        assert planner.calls[0] == ((1, 1, 3, 28, 28), (1, 0, 10))

    stuck = run_episode(env, ExpertGoals(env, recorder, 25), ZeroPlanner(recorder, codec), model, codec, episode=0, seed=0,
                        budget=50)
    if not stuck.success:  # the agent does not move: the whole budget is spent, in replans of 5 blocks
        assert stuck.steps == 50 and len(stuck.plan_latencies_s) == 2


def test_summary_statistics():
    from lewm_fast.evaluation import EpisodeResult

    results = [EpisodeResult(0, 0, True, 12, [0.1, 0.3]), EpisodeResult(1, 1, False, 50, [0.2]), EpisodeResult(2, 2, True, 0)]
    s = summarize(results)
    assert s["success_rate"] == pytest.approx(2 / 3) and s["successes"] == 2 and s["already_at_goal"] == 1
    assert s["plans"] == 3
    assert s["plan_latency_mean_s"] == pytest.approx(0.2) and s["plan_latency_median_s"] == pytest.approx(0.2)
    assert s["mean_steps_successful"] == 6


def test_cli_evaluates_end_to_end_with_cem_planner(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = eval_main([f"checkpoint={checkpoint}", "goals=expert", "episodes=2", "budget=10", "goal_offset=10", "save_episodes=1",
                    f"out={out}", *SMALL_PLANNER])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "two_room: success" in printed and "plan latency" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"] == 2 and 0.0 <= results["success_rate"] <= 1.0
    assert results["planner"]["class"] == "CEMPlanner" and results["planner"]["n_steps"] == 2
    assert results["plans"] >= 2 and results["plan_latency_mean_s"] > 0
    assert all(1 <= e["steps"] <= 10 for e in results["per_episode"])
    strip = Image.open(out / "episode_000.png")
    gif = Image.open(out / "episode_000.gif")
    assert strip.size[0] > strip.size[1] and gif.n_frames == results["per_episode"][0]["steps"] + 1
    assert not (out / "episode_001.png").exists()


def test_run_directory_resolves_to_its_latest_checkpoint(checkpoint, tmp_path):
    from lewm_fast.io import resolve_model_folder

    run = tmp_path / "run"
    for step in (5, 10):
        shutil.copytree(checkpoint, run / "checkpoints" / f"step_{step:08d}")
    assert resolve_model_folder(run).name == "step_00000010"
    assert resolve_model_folder(checkpoint) == checkpoint


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "checkpoint is required"),
        (["checkpoint=/nonexistent"], "neither a checkpoint folder"),
        (["episodes=0"], "episodes must be an integer >= 1"),
        (["planner.topk=500"], "topk \\(500\\) must be <= num_samples \\(300\\)"),
        (["planner.dtype=fp16"], "planner.dtype must be one of"),
        (["env=chess"], "chess"),
        (["history_len=4"], r"history_len must be in \[1, 3\]"),
        (["goals=oracle"], "goals must be one of"),
        (["workers=0"], "workers must be an integer >= 1"),
        (["goals=dataset"], "does not record its training file"),
        (["+env_kwargs.warp=2"], "env_kwargs: .*warp"),
        (["env_kwargs=3"], "env_kwargs must be a mapping"),
    ],
)
def test_cli_bad_values_fail_clearly(checkpoint, args, message, capsys):
    if args and not any(a.startswith("checkpoint=") for a in args):
        args = [f"checkpoint={checkpoint}", "goals=expert", *args]
    assert eval_main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_checkpoint_without_normalization_is_rejected(checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / NORMALIZATION).unlink()
    assert eval_main([f"checkpoint={bare}"]) == 2
    assert "no normalization.json" in capsys.readouterr().err


def test_cli_help_lists_planner_presets(capsys):
    assert eval_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "planner    categorical_cem, cem*, cpu_quick" in out and "goal_offset: 25" in out and "episodes: 50" in out


# ---------------------------------------------------------------------------------------------------- hardening
@pytest.mark.parametrize("success", [True, False])
def test_gif_and_strip_frame_the_goal_by_the_outcome(tmp_path, success):
    from lewm_fast.evaluation import save_gif, save_strip
    from lewm_fast.evaluation.media import FAIL_RGB, GOAL_RGB

    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    goal = np.full((16, 16, 3), 200, np.uint8)
    save_gif(tmp_path / "e.gif", frames, goal, success=success)
    save_strip(tmp_path / "e.png", frames, goal, every=1, success=success)
    want = GOAL_RGB if success else FAIL_RGB
    gif = Image.open(tmp_path / "e.gif")
    for k in range(gif.n_frames):
        gif.seek(k)
        rgb = gif.convert("RGB")
        goal_left = rgb.width // 2  # the goal tile is the right half of each GIF frame
        assert rgb.getpixel((goal_left, 0)) == want and rgb.getpixel((rgb.width - 1, 1)) == want
    strip = Image.open(tmp_path / "e.png").convert("RGB")
    assert strip.getpixel((strip.width - 1, 1)) == want


def test_checkpoint_with_nan_weights_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    broken = tmp_path / "nan"
    shutil.copytree(checkpoint, broken)
    state = torch.load(broken / "weights.pt")
    key = next(k for k in state if k.startswith("predictor."))
    state[key][0] = float("nan")
    torch.save(state, broken / "weights.pt")
    assert eval_main([f"checkpoint={broken}", "episodes=1", *SMALL_PLANNER]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite weights (NaN/inf) in 1 tensor(s), e.g. " + key in err


def test_another_env_than_the_training_one_is_refused_unless_allowed(checkpoint, tmp_path, capsys):
    assert eval_main([f"checkpoint={checkpoint}", "env=pusht", "episodes=1", *SMALL_PLANNER]) == 2
    err = capsys.readouterr().err
    assert "was trained on 'two_room', not 'pusht'" in err and "allow_env_mismatch=true" in err
    # allowed: it goes on to the next check, which a two_room model (2-d actions x 5) passes in pusht (2-d actions)
    out = tmp_path / "eval"
    rc = eval_main([f"checkpoint={checkpoint}", "env=pusht", "allow_env_mismatch=true", "goals=expert", "episodes=1", "budget=5",
                    "goal_offset=5", "save_episodes=0", f"out={out}", *SMALL_PLANNER])
    assert rc == 0 and json.loads((out / "results.json").read_text())["env"] == "pusht"


def test_stored_action_and_proprio_sizes_are_checked(checkpoint, tmp_path, capsys):
    other = tmp_path / "sizes"
    shutil.copytree(checkpoint, other)
    norm = json.loads((other / NORMALIZATION).read_text())
    (other / NORMALIZATION).write_text(json.dumps({**norm, "action_dim": 2, "proprio_dim": 7}))
    assert eval_main([f"checkpoint={other}", "episodes=1", *SMALL_PLANNER]) == 2
    assert "was trained with proprio_dim=7, but env 'two_room' has" in capsys.readouterr().err


def test_eval_refuses_added_keys(checkpoint, capsys):
    assert eval_main([f"checkpoint={checkpoint}", "+planner.temperature=3"]) == 2
    assert "unknown key 'planner.temperature'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- dataset goals
@pytest.fixture(scope="module")
def episodes_file(tmp_path_factory):
    """Three random-policy Two-Room episodes of 30 actions at 28 px, in lewm_fast's layout and in stable-worldmodel's."""
    from lewm_fast.data import collect

    root = tmp_path_factory.mktemp("goals")
    kwargs = dict(episode_len=30, image_size=28, seed=4, policy="random", progress=False,
                  env_kwargs={"terminate_at_target": False})  # full-length episodes
    return {fmt: collect("two_room", 3, root / f"{fmt}.h5", format=fmt, **kwargs) for fmt in ("lewm", "swm")}


@pytest.mark.parametrize("fmt", ["lewm", "swm"])
def test_dataset_goals_restore_a_start_and_a_goal_of_one_episode(env, episodes_file, fmt):
    from lewm_fast.data import load_episode
    from lewm_fast.evaluation import DatasetGoals

    goals = DatasetGoals(env, episodes_file[fmt], goal_offset=10)
    lengths = goals.layout.lengths
    draws = {goals.draw(seed) for seed in range(60)}
    assert all(0 <= t <= lengths[e] - 1 - 10 for e, t in draws)  # the goal never leaves the start's episode
    assert {e for e, _ in draws} == set(np.flatnonzero(lengths > 10).tolist()) and goals.draw(7) == goals.draw(7)
    episode, t = goals.draw(11)
    start, goal = goals(11)
    states = load_episode(episodes_file[fmt], episode)["state"]
    np.testing.assert_array_equal(start, states[t])
    np.testing.assert_array_equal(goal, states[t + 10])
    np.testing.assert_array_equal(env.unwrapped.get_state(), start)  # the env is left in the start state
    last = int(np.flatnonzero(lengths > 10)[-1])
    held = DatasetGoals(env, episodes_file[fmt], goal_offset=10, episodes=[last])
    assert {held.draw(seed)[0] for seed in range(20)} == {last}


def test_dataset_goals_refuse_files_they_cannot_use(env, episodes_file, tmp_path):
    from lewm_fast.evaluation import DatasetGoals

    with pytest.raises(ValueError, match="longer than goal_offset=40"):
        DatasetGoals(env, episodes_file["lewm"], goal_offset=40)  # episodes hold at most 31 frames
    with pytest.raises(ValueError, match="no simulator states"):
        DatasetGoals(env, episodes_file["swm"], goal_offset=5, columns={"state": None})
    from lewm_fast.envs import make

    with pytest.raises(ValueError, match="recorded in another environment"):
        DatasetGoals(make("pusht", image_size=28), episodes_file["lewm"], goal_offset=5)


def test_held_out_episodes_follow_the_run_that_trained_on_the_file(episodes_file):
    from lewm_fast.evaluation.runner import held_out_episodes

    path = episodes_file["lewm"]
    norm = {"data": {"path": str(path), "held_out_episodes": [1]}}
    assert held_out_episodes(path, norm, "held_out") == [1]
    assert held_out_episodes(path, norm, "all") is None
    assert held_out_episodes(episodes_file["swm"], norm, "held_out") is None  # another file: all its episodes
    assert held_out_episodes(path, None, "held_out") is None  # a checkpoint that records no training file
    with pytest.raises(ValueError, match="held out no episode"):
        held_out_episodes(path, {"data": {"path": str(path), "held_out_episodes": []}}, "held_out")


def test_cli_draws_goals_from_a_dataset(checkpoint, episodes_file, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = eval_main([f"checkpoint={checkpoint}", f"dataset={episodes_file['swm']}", "episodes=2", "budget=5",
                    "goal_offset=10", "save_episodes=0", f"out={out}", *SMALL_PLANNER])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["goals"] == "dataset" and results["dataset"] == str(episodes_file["swm"]) and results["episodes"] == 2


def test_stable_worldmodel_checkpoints_take_statistics_from_the_dataset(checkpoint, episodes_file, tmp_path, capsys):
    """A folder without normalization.json and an _object.ckpt evaluate with env= and dataset=; without them the
    error says what to pass."""
    from lewm_fast.evaluation.runner import _dataset_action_stats
    from test_object_checkpoint import save_object, standin

    bare = tmp_path / "swm_folder"
    shutil.copytree(checkpoint, bare)
    (bare / NORMALIZATION).unlink()
    obj = tmp_path / "lewm_object.ckpt"
    save_object(standin(), obj)
    for source in (bare, obj):
        assert eval_main([f"checkpoint={source}"]) == 2
        assert "pass env=<name> and dataset=" in capsys.readouterr().err
        out = tmp_path / f"eval-{source.name}"
        rc = eval_main([f"checkpoint={source}", "env=two_room", f"dataset={episodes_file['lewm']}", "episodes=1",
                        "budget=5", "goal_offset=10", "save_episodes=0", f"out={out}", *SMALL_PLANNER])
        assert rc == 0, capsys.readouterr().err
        assert json.loads((out / "results.json").read_text())["checkpoint"] == str(source)
    mean, std = _dataset_action_stats(episodes_file["lewm"], {})
    assert len(mean) == len(std) == 2 and all(s > 0 for s in std)


def test_dataset_goals_are_the_default_from_the_run_training_file(checkpoint, episodes_file, tmp_path, capsys):
    """A lewm-train checkpoint records its training file and held-out episodes: lewm-eval draws goals there by default,
    with history_len=1; workers=2 gives the sequential run's per-episode results (each episode seeded on its own)."""
    run = tmp_path / "ckpt"
    shutil.copytree(checkpoint, run)
    norm = json.loads((run / NORMALIZATION).read_text())
    norm["data"] = {"path": str(episodes_file["lewm"]), "held_out_episodes": [1, 2]}
    (run / NORMALIZATION).write_text(json.dumps(norm))
    summaries = {}
    for workers in (1, 2):
        out = tmp_path / f"eval{workers}"
        rc = eval_main([f"checkpoint={run}", f"workers={workers}", "episodes=3", "budget=5", "goal_offset=10",
                        "save_episodes=1", f"out={out}", *SMALL_PLANNER])
        assert rc == 0, capsys.readouterr().err
        summaries[workers] = json.loads((out / "results.json").read_text())
        assert (out / "episode_000.gif").exists() and not (out / "episode_001.gif").exists()
    one, two = summaries[1], summaries[2]
    assert one["goals"] == "dataset" and one["dataset"] == str(episodes_file["lewm"]) and one["history_len"] == 1
    drop = lambda episodes: [{k: v for k, v in e.items() if k != "plan_latencies_s"} for e in episodes]  # noqa: E731
    assert drop(one["per_episode"]) == drop(two["per_episode"]) and two["workers"] == 2


def test_viewer_writes_a_page_for_each_saved_episode(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = eval_main([f"checkpoint={checkpoint}", "goals=expert", "viewer=true", "episodes=2", "budget=5", "goal_offset=25",
                    "save_episodes=1", f"out={out}", *SMALL_PLANNER])
    assert rc == 0, capsys.readouterr().err
    page = (out / "episode_000.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "<script" in page
    assert not (out / "episode_001.html").exists()
    assert eval_main([f"checkpoint={checkpoint}", "viewer_probe=/nonexistent.json"]) == 2
    assert "viewer_probe /nonexistent.json does not exist" in capsys.readouterr().err
