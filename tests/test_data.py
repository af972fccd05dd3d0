"""Episode collection, the HDF5 episode file (crash safety, resume) and the training-sequence dataset."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import lewm_fast
from lewm_fast.cli.collect import main as collect_main
from lewm_fast.data import (
    ActionCodec, EpisodeFileError, EpisodeWriter, SequenceDataset, collect, episode_seeds, load_episode, read_index,
    read_stats,
)
from lewm_fast.envs import ENV_NAMES, make

SIMULATOR = {"two_room": None, "pusht": "pymunk", "reacher": "dm_control", "cube": "ogbench"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ENV_PARAMS = [
    pytest.param(name, marks=pytest.mark.skipif(
        not IN_CI and SIMULATOR[name] is not None and importlib.util.find_spec(SIMULATOR[name]) is None,
        reason=f"{SIMULATOR[name]} not installed (lewm-fast[envs] extra)"))
    for name in ENV_NAMES
]
# Two-Room episodes end at their target by default (stable-worldmodel's protocol); these tests want fixed lengths.
FIXED_LENGTH = {"terminate_at_target": False}
SMALL = dict(episode_len=20, image_size=32, progress=False, env_kwargs=FIXED_LENGTH)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        n = int(f.attrs["num_episodes"])
        starts, lengths = read_index(f)
        steps = int(starts[-1] + lengths[-1])
        out = {key: f[key][:steps] for key in ("pixels", "action", "proprio", "state")}
        out.update({key: f[key][:n] for key in ("episode_starts", "episode_lengths", "episode_seeds",
                                                 "episode_expert")})
    return out


def _assert_same_file_content(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


# ---- collection ---------------------------------------------------------------------------------------------------
def test_collect_round_trip(tmp_path):
    path = collect("two_room", 3, tmp_path / "tr.h5", seed=4, **SMALL)
    with h5py.File(path, "r") as f:
        assert f.attrs["env"] == "two_room" and f.attrs["image_size"] == 32 and f.attrs["frameskip"] == 5
        assert f.attrs["num_episodes"] == 3 and f.attrs["episode_len"] == 20
        px = f["pixels"]
        assert px.shape == (63, 32, 32, 3) and px.dtype == np.uint8
        assert px.chunks == (1, 32, 32, 3) and px.compression == "gzip"
        assert f["action"].shape == (63, 2) and f["action"].dtype == np.float32
        assert f["proprio"].shape == (63, 2) and f["proprio"].dtype == np.float32
        assert f["state"].shape == (63, 4) and f["state"].dtype == np.float64
        np.testing.assert_array_equal(f["episode_starts"][:], [0, 21, 42])
        np.testing.assert_array_equal(f["episode_lengths"][:], [21, 21, 21])
        action = f["action"][:]
        assert np.isnan(action[[20, 41, 62]]).all() and np.isfinite(np.delete(action, [20, 41, 62], 0)).all()
        np.testing.assert_allclose(f.attrs["action_mean"], np.nanmean(action, 0), rtol=1e-6)
        np.testing.assert_allclose(f.attrs["action_std"], np.nanstd(action, 0), rtol=1e-5)
        np.testing.assert_allclose(f.attrs["proprio_mean"], f["proprio"][:].mean(0), rtol=1e-5)
        seeds = f["episode_seeds"][:]
    # Every stored frame, state and action is what the environment produces: replay episode 1.
    env = make("two_room", image_size=32)
    episode = load_episode(path, 1)
    assert seeds[1] == episode_seeds(4, 1)[0]
    obs, _ = env.reset(seed=int(seeds[1]))
    for t in range(21):
        np.testing.assert_array_equal(obs["pixels"], episode["pixels"][t])
        np.testing.assert_array_equal(obs["state"], episode["state"][t])
        np.testing.assert_array_equal(obs["proprio"], episode["proprio"][t])
        if t < 20:
            obs = env.step(episode["action"][t])[0]


@pytest.mark.parametrize("name", ENV_PARAMS)
def test_collect_every_environment(tmp_path, name):
    kwargs = {"fast_render": True} if name == "cube" else {}
    path = collect(name, 2, tmp_path / f"{name}.h5", episode_len=3, image_size=32, progress=False,
                   env_kwargs=kwargs)
    env_cls = lewm_fast.envs.env_class(name)
    with h5py.File(path, "r") as f:
        assert f["pixels"].shape == (8, 32, 32, 3)
        assert f["action"].shape == (8, env_cls.action_dim)
        assert f["proprio"].shape == (8, env_cls.proprio_dim)
        assert f["state"].shape == (8, env_cls.state_dim)
        assert f["pixels"][:].std() > 5


def test_refuses_to_overwrite_without_a_flag(tmp_path):
    path = tmp_path / "tr.h5"
    collect("two_room", 1, path, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=true.*append=true"):
        collect("two_room", 1, path, **SMALL)
    collect("two_room", 2, path, overwrite=True, seed=9, **SMALL)
    with h5py.File(path, "r") as f:
        assert f.attrs["num_episodes"] == 2 and f.attrs["seed"] == 9
    with pytest.raises(ValueError, match="exclude"):
        collect("two_room", 1, path, overwrite=True, append=True, **SMALL)


def test_append_resumes_to_the_same_file_as_one_run(tmp_path):
    collect("two_room", 2, tmp_path / "part.h5", **SMALL)
    collect("two_room", 4, tmp_path / "part.h5", append=True, **SMALL)
    collect("two_room", 4, tmp_path / "full.h5", **SMALL)
    _assert_same_file_content(tmp_path / "part.h5", tmp_path / "full.h5")
    with h5py.File(tmp_path / "part.h5", "r") as f, h5py.File(tmp_path / "full.h5", "r") as g:
        np.testing.assert_allclose(read_stats(f).action_std, read_stats(g).action_std)
    with pytest.raises(EpisodeFileError, match="image_size=32.*image_size=48"):
        collect("two_room", 5, tmp_path / "part.h5", append=True, **{**SMALL, "image_size": 48})


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown environment 'maze'"):
        collect("maze", 1, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        collect("two_room", 0, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="episodes must be >= 1, got -3"):
        collect("two_room", -3, tmp_path / "x.h5")
    with pytest.raises(TypeError, match="episodes must be an int"):
        collect("two_room", "3", tmp_path / "x.h5")
    with pytest.raises(ValueError, match="unknown policy"):
        collect("two_room", 1, tmp_path / "x.h5", policy="greedy")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write episodes to"):
        collect("two_room", 1, blocker / "x.h5")
    with pytest.raises(IsADirectoryError):
        collect("two_room", 1, tmp_path, overwrite=True)
    assert not (tmp_path / "x.h5").exists()


KILL_SCRIPT = """
import importlib, os, signal, sys
import h5py
from lewm_fast.data import collect

collect_module = importlib.import_module("lewm_fast.data.collect")  # the package attribute is the function

mode, path = sys.argv[1], sys.argv[2]
if mode == "mid_episode":  # SIGKILL while simulating the third episode
    original, calls = collect_module.rollout, []
    def rollout(env, policy, episode_len, seed):
        calls.append(seed)
        if len(calls) == 3:
            policy.act = lambda obs: os.kill(os.getpid(), signal.SIGKILL)
        return original(env, policy, episode_len, seed)
    collect_module.rollout = rollout
else:  # SIGKILL after the third episode's steps are flushed, before it is committed
    original_resize = h5py.Dataset.resize
    def resize(self, size, axis=None):
        if self.name == "/episode_starts" and size == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_resize(self, size, axis)
    h5py.Dataset.resize = resize
collect("two_room", 6, path, episode_len=20, image_size=32, progress=False, env_kwargs={"terminate_at_target": False})
"""


@pytest.mark.parametrize("mode", ["mid_episode", "before_commit"])
def test_a_killed_collection_leaves_a_readable_file_and_resumes(tmp_path, mode):
    path = tmp_path / "killed.h5"
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    result = subprocess.run([sys.executable, str(script), mode, str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    with h5py.File(path, "r") as f:
        starts, lengths = read_index(f)
        assert len(starts) == 2 and f["pixels"].shape[0] >= 42
        if mode == "before_commit":
            assert f["pixels"].shape[0] == 63  # an uncommitted tail that append must drop
    dataset = SequenceDataset(path)
    assert len(dataset) == 2 * (21 - 15)
    collect("two_room", 4, path, append=True, **SMALL)
    collect("two_room", 4, tmp_path / "full.h5", **SMALL)
    _assert_same_file_content(path, tmp_path / "full.h5")


def test_writer_rejects_foreign_files(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(EpisodeFileError, match="not a lewm_fast episode file"):
        SequenceDataset(path)
    with pytest.raises(EpisodeFileError, match="not a lewm_fast episode file"):
        collect("two_room", 1, path, append=True, **SMALL)


@pytest.mark.parametrize("column", ["pixels", "action", "state", "episode_lengths", "proprio_sum"])
def test_a_lewm_file_missing_a_column_names_it(tmp_path, capsys, column):
    path = _synthetic(tmp_path / "syn.h5")
    with h5py.File(path, "r+") as f:
        del f[column]
    message = f"{path} is a lewm_fast episode file (format_version attribute) but has no '{column}' column; it holds "
    with pytest.raises(EpisodeFileError, match=re.escape(message)):
        SequenceDataset(path)
    with pytest.raises(EpisodeFileError, match=re.escape(message)):
        load_episode(path, 0)
    with pytest.raises(EpisodeFileError, match=re.escape(message)):
        EpisodeWriter.append(path, attrs={})
    from lewm_fast.cli.data import main as data_main

    assert data_main(["convert", f"in={path}", f"out={tmp_path / 'out.h5'}", "to=swm", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lewm-data: error: {message}") and err.count("\n") == 1


# ---- dataset ------------------------------------------------------------------------------------------------------
def _synthetic(path: Path, lengths=(21, 17, 10), image_size=8) -> Path:
    """Episodes whose step t (global index) has pixels == t % 256, action (t, 100 + t), proprio (t,), state (t, -t)."""
    writer = EpisodeWriter.create(path, env="two_room", image_size=image_size, action_dim=2, proprio_dim=1,
                                  state_dim=2)
    with writer:
        t0 = 0
        for length in lengths:
            t = np.arange(t0, t0 + length)
            action = np.stack([t, 100 + t], 1).astype(np.float32)
            action[-1] = np.nan
            writer.write_episode(
                pixels=np.broadcast_to((t % 256).astype(np.uint8)[:, None, None, None],
                                       (length, image_size, image_size, 3)).copy(),
                action=action, proprio=t[:, None].astype(np.float32),
                state=np.stack([t, -t], 1).astype(np.float64), seed=0, expert=True,
            )
            t0 += length
    return path


def test_sequence_windows_and_frameskip_alignment(tmp_path):
    ds = SequenceDataset(_synthetic(tmp_path / "syn.h5"))
    # windows need 16 steps: episode 0 (21 steps) gives 6, episode 1 (17) gives 2, episode 2 (10) none
    assert len(ds) == 8 and ds.action_dim == 10 and ds.env_action_dim == 2
    starts = [int(ds[i]["state"][0, 0]) for i in range(len(ds))]
    assert starts == [0, 1, 2, 3, 4, 5, 21, 22]
    for i, start in enumerate(starts):
        item = ds[i]
        end = 21 if start < 21 else 38
        assert item["pixels"].shape == (4, 3, 8, 8) and item["pixels"].dtype == torch.float32
        assert item["action"].shape == (4, 10) and item["proprio"].shape == (4, 1)
        frames = start + 5 * np.arange(4)
        np.testing.assert_array_equal(item["state"][:, 0].numpy(), frames)  # frame j is step start + 5j
        uint8_frames = np.broadcast_to((frames % 256).astype(np.uint8)[:, None, None, None], (4, 8, 8, 3))
        expected_pixels = lewm_fast.preprocess_frames(torch.from_numpy(uint8_frames.copy()))
        torch.testing.assert_close(item["pixels"], expected_pixels)
        raw = ds.denormalize_action(item["action"]).reshape(4, 5, 2).numpy()
        for j in range(4):
            steps = start + 5 * j + np.arange(5)
            valid = steps < end - 1  # the final step of an episode has no action; past the end is padding
            np.testing.assert_allclose(raw[j, valid, 0], steps[valid], atol=1e-3)
            np.testing.assert_allclose(raw[j, valid, 1], 100 + steps[valid], atol=1e-3)
            assert np.isnan(raw[j, ~valid]).all()
            assert j == 3 or valid.all()  # only the last frame's block can run past the episode
        mean, std = ds.stats.proprio_mean, ds.stats.proprio_std
        np.testing.assert_allclose(item["proprio"][:, 0].numpy(), (frames - mean[0]) / std[0], rtol=1e-5)


def test_stats_come_from_the_file(tmp_path):
    ds = SequenceDataset(_synthetic(tmp_path / "syn.h5"))
    t_all = np.arange(48)
    finite = np.concatenate([np.arange(0, 20), np.arange(21, 37), np.arange(38, 47)])  # the last step has no action
    np.testing.assert_allclose(ds.stats.action_mean, [finite.mean(), 100 + finite.mean()])
    np.testing.assert_allclose(ds.stats.action_std, [finite.std(), finite.std()])
    np.testing.assert_allclose(ds.stats.proprio_mean, [t_all.mean()])
    x = torch.randn(3, 10)
    torch.testing.assert_close(ds.denormalize_action(ds.normalize_action(x)), x, rtol=0, atol=1e-4)
    mean, std = (torch.tensor(np.tile(v, 5), dtype=torch.float32) for v in (ds.stats.action_mean, ds.stats.action_std))
    assert torch.equal(ds.normalize_action(x), (x - mean) / std)  # in float32, with the file's statistics
    actions = np.random.default_rng(0).normal(size=(5, 2))  # evaluation's codec: the same normalisation, in float64
    codec = ActionCodec(ds.stats.action_mean, ds.stats.action_std, frameskip=5, action_dim=2)
    assert torch.equal(codec.to_model(actions), ds.normalize_action(torch.from_numpy(actions.reshape(-1))).float())


def test_dataset_resize_and_episode_subset(tmp_path):
    path = _synthetic(tmp_path / "syn.h5", image_size=16)
    ds = SequenceDataset(path, image_size=8, episodes=[1])
    assert len(ds) == 2
    item = ds[0]
    assert item["pixels"].shape == (4, 3, 8, 8)
    assert int(item["state"][0, 0]) == 21
    expected = lewm_fast.preprocess_frames(torch.full((4, 8, 8, 3), 0, dtype=torch.uint8)
                                           + torch.tensor([21, 26, 31, 36], dtype=torch.uint8)[:, None, None, None])
    torch.testing.assert_close(item["pixels"], expected)  # uniform frames stay uniform under resizing
    short = SequenceDataset(path, num_frames=2, frameskip=3)
    assert len(short) == (21 - 3) + (17 - 3) + (10 - 3)
    assert short.action_dim == 6


def test_dataset_bad_arguments(tmp_path):
    path = _synthetic(tmp_path / "syn.h5")
    with pytest.raises(FileNotFoundError):
        SequenceDataset(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        SequenceDataset(path, num_frames=0)
    with pytest.raises(TypeError, match="frameskip must be an int"):
        SequenceDataset(path, frameskip=2.5)
    with pytest.raises(ValueError, match="no episode .* has the 31 steps"):
        SequenceDataset(path, num_frames=4, frameskip=10)
    with pytest.raises(IndexError):
        SequenceDataset(path, episodes=[3])
    with pytest.raises(IndexError):
        SequenceDataset(path)[8]


def test_dataloader_with_worker_processes(tmp_path):
    path = collect("two_room", 3, tmp_path / "tr.h5", **SMALL)
    ds = SequenceDataset(path)
    assert len(ds) == 3 * (21 - 15)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    pixels = torch.cat([b["pixels"] for b in batches])
    assert pixels.shape == (18, 4, 3, 32, 32)
    direct = default_collate([ds[i] for i in range(len(ds))])
    for key in ("pixels", "action", "proprio", "state"):
        torch.testing.assert_close(torch.cat([b[key] for b in batches]), direct[key], equal_nan=True)


def test_dataset_feeds_the_training_loss(tmp_path):
    from lewm_fast.reference import SIGReg, lewm_loss

    path = collect("two_room", 2, tmp_path / "tr.h5", **SMALL)
    ds = SequenceDataset(path)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    model = lewm_fast.build_lewm(action_dim=ds.env_action_dim, image_size=32, patch_size=8, num_hidden_layers=1,
                                 depth=1, mlp_dim=64, proj_hidden_dim=32, heads=2, dim_head=16)
    assert model.action_dim == ds.action_dim
    terms = lewm_loss(model, batch["pixels"], batch["action"], SIGReg(num_proj=64))
    assert torch.isfinite(terms.loss)
    terms.loss.backward()


# ---- command line -------------------------------------------------------------------------------------------------
def test_cli_collects(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert collect_main(["env=two_room", "episodes=2", f"out={out}", "episode_len=16", "image_size=32",
                         "progress=false", "seed=3", "+env_kwargs.terminate_at_target=false"]) == 0
    assert "holds 2 two_room episodes (34 frames)" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert f.attrs["seed"] == 3 and f["pixels"].shape == (34, 32, 32, 3)


@pytest.mark.parametrize("args, message", [
    (["env=maze", "episodes=2", "out=x.h5"], "unknown environment 'maze'"),
    (["env=two_room", "episodes=0", "out=x.h5"], "episodes must be >= 1"),
    (["env=two_room"], "missing required argument.*episodes=.*out="),
    (["env=two_room", "episodes=2", "out=x.h5", "colour=red"], "bad arguments: unknown key 'colour'"),
    (["env=two_room", "episodes=2", "out=x.h5", "+colour=red"], "bad arguments: unknown key 'colour': nothing would"),
    (["env=two_room", "episodes=2", "out=x.h5", "++env_kwargs=1"], "bad arguments: env_kwargs must be a mapping"),
    (["env=two_room", "episodes=2", "out=data.h5", "append=true"], "cannot open .*data.h5 as an HDF5 episode file"),
    (["--episodes", "2"], "unrecognised option"),
])
def test_cli_bad_arguments(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.h5").write_text("not HDF5")  # for append=true
    assert collect_main(args) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1


def test_cli_adds_keys_only_under_env_kwargs(tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert collect_main(["env=two_room", "episodes=1", f"out={out}", "episode_len=8", "image_size=16", "progress=false",
                         "+env_kwargs.bogus=1"]) == 2  # env_kwargs is open: the env itself refuses the argument
    assert "bogus" in capsys.readouterr().err


def test_cli_unwritable_and_existing_output(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert collect_main(["env=two_room", "episodes=1", f"out={blocker}/x.h5", "progress=false"]) == 2
    assert "cannot write episodes" in capsys.readouterr().err
    assert collect_main(["env=two_room", "episodes=1", f"out={blocker}", "progress=false"]) == 2
    assert "already exists; pass overwrite=true" in capsys.readouterr().err


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "lewm_fast.cli.collect", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for text in ("usage: lewm-collect env=<name> episodes=<N> out=<path.h5>", "two_room", "append", "overwrite",
                 "image_size: 224"):
        assert text in result.stdout
