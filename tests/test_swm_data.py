"""stable-worldmodel's HDF5 layout: reading it with exactly its windows, its errors, compression filters, training on
it, collecting into it (lewm-collect format=swm) and converting both ways (lewm-data convert).

Files are written here by ``SwmStyleWriter``, a stand-in written for these tests that mirrors
``stable_worldmodel.data.formats.hdf5.HDF5Writer`` column for column (not lewm_fast's writer), and windows are compared
with ``swm_reference_items``, a re-implementation of ``stable_worldmodel.data.HDF5Dataset``'s window rule
(``Dataset.clip_indices`` + ``HDF5Dataset._load_slice``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lewm_fast
from lewm_fast.cli.collect import main as collect_main
from lewm_fast.cli.data import main as data_main
from lewm_fast.data import (
    EpisodeFileError,
    EpisodeWriter,
    SequenceDataset,
    collect,
    convert,
    load_episode,
    read_layout,
    read_layout_stats,
    read_stats,
    swm_format,
)

HAVE_HDF5PLUGIN = importlib.util.find_spec("hdf5plugin") is not None
needs_hdf5plugin = pytest.mark.skipif(not HAVE_HDF5PLUGIN, reason="hdf5plugin not installed (lewm-fast[swm] extra)")
ROLES = ("pixels", "action", "proprio", "state")
LENGTHS = (23, 4, 12, 1, 20, 9)  # spans 1..20 of frameskip 1 and 5, num_steps 1..4: some episodes too short for each


# ---- stable-worldmodel stand-ins ------------------------------------------------------------------------------------
class SwmStyleWriter:
    """Mirrors stable-worldmodel's HDF5Writer: the schema comes from the first episode (per column: shape (0, *s),
    maxshape (None, *s), chunks (1, *s), the sample's dtype; text columns variable-length strings, chunks (1,)); each
    episode's rows are appended column by column, then ep_len (int32) and ep_offset (int64) grow by one row.
    ``filters``: compression keyword arguments for the numeric columns (stable-worldmodel's files in the wild)."""

    def __init__(self, path: Path, filters: dict | None = None) -> None:
        self.f = h5py.File(path, "w", libver="latest")
        self.filters = filters or {}
        self.rows = 0

    def write_episode(self, episode: dict) -> None:
        if "ep_len" not in self.f:
            for col, values in episode.items():
                sample = values[0]
                if isinstance(sample, str):
                    self.f.create_dataset(col, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(1,))
                    continue
                sample = np.asarray(sample)
                self.f.create_dataset(col, shape=(0, *sample.shape), maxshape=(None, *sample.shape),
                                      dtype=sample.dtype, chunks=(1, *sample.shape), **self.filters)
            self.f.create_dataset("ep_len", shape=(0,), maxshape=(None,), dtype=np.int32)
            self.f.create_dataset("ep_offset", shape=(0,), maxshape=(None,), dtype=np.int64)
        length = len(next(iter(episode.values())))
        for col, values in episode.items():
            ds = self.f[col]
            ds.resize(self.rows + length, axis=0)
            ds[self.rows:self.rows + length] = np.array(values, dtype=object) if ds.dtype.kind == "O" else values
        n = self.f["ep_len"].shape[0]
        for key, value in (("ep_len", length), ("ep_offset", self.rows)):
            self.f[key].resize(n + 1, axis=0)
            self.f[key][n] = value
        self.rows += length

    def close(self) -> None:
        self.f.close()


def swm_reference_items(path: Path, frameskip: int, num_steps: int, columns: dict | None = None) -> list[dict]:
    """stable_worldmodel.data.HDF5Dataset(frameskip, num_steps)'s items, re-implemented: clips (episode, start) for
    every episode of length >= span = num_steps * frameskip and start in range(length - span + 1); the slice
    [offset + start, offset + start + span) of each column, every frameskip-th row except for action, whose span rows
    are reshaped to (num_steps, frameskip * A). Pixels are returned channels-last."""
    columns = {**{role: role for role in ROLES}, **(columns or {})}
    span = num_steps * frameskip
    items = []
    with h5py.File(path, "r") as f:
        lengths, offsets = f["ep_len"][:], f["ep_offset"][:]
        clips = [(ep, start) for ep, length in enumerate(lengths) if length >= span
                 for start in range(length - span + 1)]
        for ep, start in clips:
            lo = offsets[ep] + start
            item = {}
            for role, col in columns.items():
                if col is None or col not in f:
                    continue
                data = f[col][lo:lo + span]
                item[role] = data.reshape(num_steps, -1) if role == "action" else data[::frameskip]
            if item["pixels"].shape[-1] != 3:
                item["pixels"] = item["pixels"].transpose(0, 2, 3, 1)
            items.append(item)
    return items


def synthetic_episode(rng: np.random.Generator, length: int, index: int, image_size: int = 8) -> dict:
    """An episode as stable-worldmodel records it: action NaN on the last step, extra columns and a text column."""
    action = rng.normal(size=(length, 2)).astype(np.float32) * [1.0, 3.0] + [0.5, -2.0]
    action[-1] = np.nan
    return {
        "pixels": rng.integers(0, 256, (length, image_size, image_size, 3), dtype=np.uint8),
        "action": action.astype(np.float32),
        "proprio": rng.normal(size=(length, 3)).astype(np.float32) * 2.0 + 1.0,
        "state": rng.normal(size=(length, 4)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "terminated": np.zeros(length, dtype=bool),
        "ep_idx": np.full(length, index, dtype=np.int64),
        "step_idx": np.arange(length, dtype=np.int64),
        "task": [f"reach goal {index}"] * length,
    }


def write_swm(path: Path, lengths=LENGTHS, filters: dict | None = None, rename: dict | None = None, seed: int = 0,
              drop: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(seed)
    writer = SwmStyleWriter(path, filters)
    for index, length in enumerate(lengths):
        episode = synthetic_episode(rng, length, index)
        writer.write_episode({(rename or {}).get(k, k): v for k, v in episode.items() if k not in drop})
    writer.close()
    return path


@pytest.fixture(scope="module")
def swm_file(tmp_path_factory) -> Path:
    return write_swm(tmp_path_factory.mktemp("swm") / "synthetic.h5")


def assert_same_windows(ds: SequenceDataset, reference: list[dict]) -> None:
    """Item i of ``ds`` is reference item i, in lewm_fast's item format (normalised pixels, action blocks, proprio)."""
    assert len(ds) == len(reference)
    for i, ref in enumerate(reference):
        item = ds[i]
        torch.testing.assert_close(item["pixels"], lewm_fast.preprocess_frames(torch.from_numpy(ref["pixels"].copy())),
                                   rtol=0, atol=0)
        raw = torch.from_numpy(ref["action"]).float()
        torch.testing.assert_close(item["action"], ds.normalize_action(raw), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ds.denormalize_action(item["action"]), raw, equal_nan=True)
        for role, width in (("proprio", ds.proprio_dim), ("state", ds.state_dim)):
            expected = ref.get(role, np.zeros((ds.num_frames, 0)))
            assert item[role].shape == (ds.num_frames, width)
            if role == "proprio":
                expected = (torch.from_numpy(expected).float() - ds._proprio_mean) / ds._proprio_std
                torch.testing.assert_close(item[role], expected, rtol=0, atol=0)
            else:
                assert item[role].dtype == torch.float64
                np.testing.assert_array_equal(item[role].numpy(), expected.astype(np.float64))


# ---- reading: exactly stable-worldmodel's windows -------------------------------------------------------------------
@pytest.mark.parametrize("frameskip", [1, 5])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 4])
def test_windows_equal_stable_worldmodel_hdf5dataset(swm_file, frameskip, num_steps):
    ds = SequenceDataset(swm_file, num_frames=num_steps, frameskip=frameskip)
    assert ds.layout.kind == "swm" and ds.env_name is None and ds.action_dim == 2 * frameskip
    assert (ds.env_action_dim, ds.proprio_dim, ds.state_dim, ds.stored_image_size) == (2, 3, 4, 8)
    span = num_steps * frameskip
    assert len(ds) == sum(length - span + 1 for length in LENGTHS if length >= span)  # short episodes give none
    assert_same_windows(ds, swm_reference_items(swm_file, frameskip, num_steps))


def test_statistics_are_streamed_over_the_episodes(swm_file, monkeypatch):
    with h5py.File(swm_file, "r") as f:
        action, proprio = f["action"][:].astype(np.float64), f["proprio"][:].astype(np.float64)
    finite = action[np.isfinite(action).all(1)]
    monkeypatch.setattr(swm_format, "STATS_BLOCK_ROWS", 5)  # many blocks, some splitting an episode
    stats = SequenceDataset(swm_file, num_frames=1, frameskip=1).stats
    np.testing.assert_allclose(stats.action_mean, finite.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.action_std, finite.std(0), rtol=1e-10)
    np.testing.assert_allclose(stats.proprio_mean, proprio.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.proprio_std, proprio.std(0), rtol=1e-10)


def test_rows_outside_episodes_and_episode_order(tmp_path):
    """Rows no episode covers (a gap, a killed writer's tail, one extra ep_offset row) are ignored; episodes are
    windowed in ep_len order even when their rows are not in that order, as stable-worldmodel does."""
    path = write_swm(tmp_path / "gaps.h5", lengths=(10, 30, 25))
    with h5py.File(path, "r+") as f:
        f["ep_len"][:] = [10, 25, 6]
        f["ep_offset"][:] = [40, 10, 0]  # rows 6..9 and 35..39 belong to no episode
        for key in ("pixels", "action", "proprio", "state"):
            f[key].resize(70, axis=0)  # a tail of junk rows
        f["action"][6:10] = f["action"][35:40] = f["action"][50:] = 1e6
        f["ep_offset"].resize(4, axis=0)
        f["ep_offset"][3] = 50  # a killed writer's uncommitted ep_offset row
    ds = SequenceDataset(path, num_frames=2, frameskip=3)
    assert_same_windows(ds, swm_reference_items(path, 3, 2))
    assert np.all(np.abs(ds.stats.action_mean) < 10)  # the junk rows take no part


def test_channels_first_pixels(tmp_path, swm_file):
    path = tmp_path / "chw.h5"
    with h5py.File(swm_file, "r") as src, h5py.File(path, "w") as dst:
        for key in (*ROLES, "ep_len", "ep_offset"):
            values = src[key][:]
            dst[key] = values.transpose(0, 3, 1, 2) if key == "pixels" else values
    ds = SequenceDataset(path, num_frames=3, frameskip=2)
    assert ds.layout.channels_first and ds.stored_image_size == 8
    assert_same_windows(ds, swm_reference_items(path, 2, 3))
    resized = SequenceDataset(path, num_frames=3, frameskip=2, image_size=16)
    assert resized[0]["pixels"].shape == (3, 3, 16, 16)


@pytest.mark.parametrize("filters", [
    pytest.param({"compression": "gzip", "compression_opts": 4}, id="gzip"),
    pytest.param({"compression": "lzf", "shuffle": True}, id="lzf"),
    pytest.param("blosc", id="blosc", marks=needs_hdf5plugin),
])
def test_compressed_files(tmp_path, filters):
    if filters == "blosc":
        import hdf5plugin

        filters = dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    path = write_swm(tmp_path / "compressed.h5", filters=filters)
    for frameskip, num_steps in ((1, 2), (5, 4)):
        assert_same_windows(SequenceDataset(path, num_frames=num_steps, frameskip=frameskip),
                            swm_reference_items(path, frameskip, num_steps))


def test_column_mapping_and_absent_optional_columns(tmp_path):
    path = write_swm(tmp_path / "renamed.h5", rename={"pixels": "observation", "action": "act"},
                     drop=("proprio", "state"))
    columns = {"pixels": "observation", "action": "act"}
    ds = SequenceDataset(path, num_frames=2, frameskip=5, columns=columns, env="two_room")
    assert (ds.proprio_dim, ds.state_dim, ds.env_name) == (0, 0, "two_room")
    assert ds.stats.proprio_mean.shape == (0,)
    assert_same_windows(ds, swm_reference_items(path, 5, 2, columns=columns))
    ignored = SequenceDataset(write_swm(tmp_path / "full.h5"), num_frames=2, frameskip=5, columns={"state": ""})
    assert ignored.state_dim == 0 and ignored[0]["state"].shape == (2, 0)


# ---- bad inputs ---------------------------------------------------------------------------------------------------
def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


def test_neither_layout(tmp_path):
    path = _h5(tmp_path / "foreign.h5", x=np.zeros(3), pixels=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(EpisodeFileError, match=r"not a lewm_fast episode file \(format_version .* nor a "
                       r"stable-worldmodel HDF5 dataset \(ep_len and ep_offset .*its root holds pixels, x"):
        SequenceDataset(path)
    half = _h5(tmp_path / "half.h5", ep_len=np.array([3], np.int32), pixels=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(EpisodeFileError, match="it has ep_len but no ep_offset"):
        SequenceDataset(half)


def test_missing_or_misshapen_columns(tmp_path, swm_file):
    no_action = write_swm(tmp_path / "no_action.h5", drop=("action",))
    with pytest.raises(EpisodeFileError, match=r"has no 'action' column for action; its columns: ep_idx, ep_len, "
                       r"ep_offset, pixels, proprio, reward, state, step_idx, task, terminated"):
        SequenceDataset(no_action)
    with pytest.raises(EpisodeFileError, match="has no 'joints' column for proprio"):
        SequenceDataset(swm_file, columns={"proprio": "joints"})  # named explicitly: required
    with pytest.raises(ValueError, match="unknown column role 'reward'"):
        SequenceDataset(swm_file, columns={"reward": "reward"})
    with pytest.raises(ValueError, match="the pixels role needs a column"):
        SequenceDataset(swm_file, columns={"pixels": None})
    with pytest.raises(EpisodeFileError, match=r"column 'reward' \(pixels\) must hold uint8 RGB frames"):
        SequenceDataset(swm_file, columns={"pixels": "reward"})
    with pytest.raises(EpisodeFileError, match=r"column 'reward' \(action\) must be numeric \(N, D\)"):
        SequenceDataset(swm_file, columns={"action": "reward"})
    with pytest.raises(EpisodeFileError, match="records env='two_room', not 'pusht'"):
        SequenceDataset(collect("two_room", 1, tmp_path / "tr.h5", episode_len=4, image_size=16, progress=False,
                                format="swm"), env="pusht")


@pytest.mark.parametrize("ep_len, ep_offset, rows, message", [
    ([10, 10, 10], [0, 5, 20], 30, (r"ep_offset disagrees with ep_len: episode 1 starts at row 5 \(ep_offset\[1\]\) "
                                   r"inside episode 0, rows 0..9 \(ep_offset\[0\]=0, ep_len\[0\]=10\)")),
    ([10, 10, 10], [0], 30, "ep_len has 3 rows but ep_offset has 1"),
    ([10, -1], [0, 10], 30, r"episode 1 has ep_len\[1\]=-1; ep_len must be >= 0"),
    ([10, 10], [0, -4], 30, r"episode 1 has ep_offset\[1\]=-4"),
    ([10, 25], [0, 10], 30, (r"episode 1 covers rows 10..34 \(ep_offset\[1\]=10, ep_len\[1\]=25\) but column "
                            r"'pixels' has 30 rows")),
])
def test_bad_episode_index(tmp_path, ep_len, ep_offset, rows, message):
    path = _h5(tmp_path / "bad.h5", pixels=np.zeros((rows, 8, 8, 3), np.uint8), action=np.zeros((rows, 2), np.float32),
               ep_len=np.array(ep_len, np.int32), ep_offset=np.array(ep_offset, np.int64))
    with pytest.raises(EpisodeFileError, match=message):
        SequenceDataset(path, num_frames=1, frameskip=1)
    assert data_main(["convert", f"in={path}", f"out={tmp_path / 'x.h5'}", "to=lewm", "env=a", "progress=false"]) == 2


def test_a_killed_stable_worldmodel_writer_leaves_an_uncommitted_ep_len_row(tmp_path):
    """stable-worldmodel's HDF5Writer grows ep_len before ep_offset: killed between the two, its file holds one more
    ep_len row (the last episode's rows written). That episode is ignored, like the extra ep_offset row lewm-collect's
    writer can leave (stable-worldmodel's own HDF5Dataset lists its windows and fails with an IndexError on them)."""
    killed = write_swm(tmp_path / "killed.h5")
    with h5py.File(killed, "r+") as f:
        f["ep_offset"].resize(len(LENGTHS) - 1, axis=0)
    committed = write_swm(tmp_path / "committed.h5", lengths=LENGTHS[:-1])  # same seed: the same first episodes
    for frameskip, num_steps in ((1, 2), (5, 3)):
        ds = SequenceDataset(killed, num_frames=num_steps, frameskip=frameskip)
        assert ds.layout.num_episodes == len(LENGTHS) - 1
        assert_same_windows(ds, swm_reference_items(committed, frameskip, num_steps))
    out = convert(killed, tmp_path / "k.h5", "lewm", env="two_room", progress=False)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["episode_lengths"][:], LENGTHS[:-1])


def test_one_process_reads_a_file_with_stable_worldmodel_and_lewm_fast(tmp_path, swm_file):
    """HDF5 opens a file twice in one process only with the same SWMR flag; stable-worldmodel's HDF5Dataset opens with
    ``h5py.File(path, 'r', swmr=True, rdcc_nbytes=256 MiB)``. lewm_fast's readers open read-only files in SWMR mode
    too, and fall back to a plain open when this process already holds the file open without it."""

    def swm_open(path: Path) -> h5py.File:  # HDF5Dataset._open_h5 of a local path
        return h5py.File(path, "r", swmr=True, rdcc_nbytes=256 * 1024 * 1024)

    reference = swm_reference_items(swm_file, 1, 2)[0]
    ds = SequenceDataset(swm_file, num_frames=2, frameskip=1)
    ds[0]  # lewm_fast's handle is open ...
    with swm_open(swm_file) as f:  # ... then stable-worldmodel's
        np.testing.assert_array_equal(f["pixels"][0:2], reference["pixels"])
    with swm_open(swm_file) as f:  # stable-worldmodel's first, then lewm_fast's
        fresh = SequenceDataset(swm_file, num_frames=2, frameskip=1)
        torch.testing.assert_close(fresh[0]["pixels"], ds[0]["pixels"], rtol=0, atol=0)
        assert f["ep_len"].shape == (len(LENGTHS),)
    plain = write_swm(tmp_path / "plain.h5")
    with h5py.File(plain, "r") as f:  # a plain read-only handle opened first
        assert read_layout(f).num_episodes == len(LENGTHS)
        assert len(SequenceDataset(plain, num_frames=2, frameskip=1)[0]["pixels"]) == 2
        assert load_episode(plain, 0)["action"].shape == (LENGTHS[0], 2)


def test_nan_actions_inside_episodes_are_found(tmp_path):
    path = write_swm(tmp_path / "nan.h5")
    with h5py.File(path, "r+") as f:
        starts = f["ep_offset"][:]
        for episode, step, dim in ((0, 3, 1), (0, 7, 0), (4, 0, 0), (4, 19, 1)):  # (4, 19): episode 4's last step
            f["action"][starts[episode] + step, dim] = np.nan
    with h5py.File(path, "r") as f:
        layout = read_layout(f)
        found = lewm_fast.data.find_nan_actions(f, layout)
        stats, once = lewm_fast.data.read_stats_and_nan_actions(f, layout)  # one pass over the actions
        expected = read_layout_stats(f, layout)
    assert once == found and all(np.array_equal(getattr(stats, k), getattr(expected, k)) for k in vars(expected))
    assert found.episodes == (0, 4) and found.counts == (2, 1) and found.steps == 3
    assert found.first == ((0, 3), (0, 7), (4, 0))
    assert found.describe() == (f"{path} holds 3 NaN action step(s) before the last step of 2 episode(s) (episode 0 "
                                "step 3, episode 0 step 7, episode 4 step 0)")
    ds = SequenceDataset(path, num_frames=1, frameskip=5)  # read as NaN, as stable-worldmodel's HDF5Dataset does
    assert torch.isnan(ds[0]["action"]).sum() == 1 and not torch.isnan(ds[8]["action"]).any()  # steps 0..4, 8..12
    with h5py.File(write_swm(tmp_path / "clean.h5"), "r") as f:
        assert not lewm_fast.data.find_nan_actions(f, read_layout(f))


UNAVAILABLE_FILTER = """
import sys
sys.modules["hdf5plugin"] = None  # as if it were not installed
from lewm_fast.cli.data import main
from lewm_fast.data import EpisodeFileError, SequenceDataset
try:
    SequenceDataset(sys.argv[1], num_frames=1, frameskip=1)
except EpisodeFileError as exc:
    print(exc)
sys.exit(main(["convert", f"in={sys.argv[1]}", f"out={sys.argv[1]}.lewm.h5", "to=lewm", "env=x"]))
"""


@needs_hdf5plugin
def test_unavailable_filter_names_it_and_the_fix(tmp_path):
    import hdf5plugin

    path = write_swm(tmp_path / "blosc.h5", filters=dict(hdf5plugin.Blosc()))
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path / "no_plugins")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(UNAVAILABLE_FILTER), str(path)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert re.search(r"column '\w+' is compressed with the HDF5 filter 'blosc' \(id 32001\), which is not available "
                     r"here; pip install hdf5plugin \(or pip install 'lewm-fast\[swm\]'\)", result.stdout)
    assert result.stderr.startswith("lewm-data: error: ") and result.stderr.count("\n") == 1
    assert "pip install hdf5plugin" in result.stderr and not (tmp_path / "blosc.h5.lewm.h5").exists()


def test_a_filter_no_plugin_provides(tmp_path):
    path = tmp_path / "unknown_filter.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("pixels", data=np.zeros((4, 8, 8, 3), np.uint8), chunks=(1, 8, 8, 3), compression=32099,
                         allow_unknown_filter=True)
        f["action"], f["ep_len"], f["ep_offset"] = np.zeros((4, 2), np.float32), np.array([4], np.int32), [0]
    fix = "hdf5plugin is installed but lacks it" if HAVE_HDF5PLUGIN else "pip install hdf5plugin"
    with pytest.raises(EpisodeFileError, match=rf"column 'pixels' is compressed with the HDF5 filter 'unnamed' "
                       rf"\(id 32099\), which is not available here; {fix}"):
        SequenceDataset(path, num_frames=1, frameskip=1)


# ---- training -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """4 Two-Room episodes of 31 frames at 32 px, lewm_fast layout."""
    return collect("two_room", 4, tmp_path_factory.mktemp("tr") / "tr.h5", episode_len=30, image_size=32, seed=1,
                   progress=False, env_kwargs={"terminate_at_target": False})  # fixed-length episodes


def lewm_to_swm_style(src: Path, dst: Path, keys: tuple[str, ...] = ROLES) -> Path:
    """The episodes of a lewm_fast file, written by the stable-worldmodel stand-in (no env attribute)."""
    writer = SwmStyleWriter(dst)
    with h5py.File(src, "r") as f:
        for start, length in zip(f["episode_starts"][:], f["episode_lengths"][:], strict=True):
            writer.write_episode({key: f[key][start:start + length] for key in keys})
    writer.close()
    return dst


@pytest.mark.usefixtures("one_thread")
def test_lewm_train_on_a_stable_worldmodel_file(tmp_path, collected, capsys):
    from lewm_fast.cli.train import main as train_main
    from lewm_fast.io import list_checkpoints, read_normalization

    path = lewm_to_swm_style(collected, tmp_path / "swm.h5", keys=("pixels", "action", "proprio"))  # no state
    tiny = ["model.image_size=32", "model.patch_size=8", "model.hidden_size=32", "model.num_hidden_layers=1",
            "model.num_attention_heads=2", "model.intermediate_size=64", "model.latent_dim=32", "model.depth=1",
            "model.heads=2", "model.dim_head=16", "model.mlp_dim=64", "model.proj_hidden_dim=64", "batch_size=8",
            "sigreg.num_proj=64", "log_every=2"]
    run = tmp_path / "run"
    assert train_main([f"data.path={path}", f"out={run}", *tiny, "epochs=1", "data.val_fraction=0.25"]) == 0
    log = json.loads((run / "train_log.json").read_text())
    assert log["dataset_sequences"] == 3 * (31 - 20 + 1) and log["val_sequences"] == 31 - 20 + 1  # swm windows
    norm = read_normalization(list_checkpoints(run)[-1])
    stats = SequenceDataset(path).stats
    assert norm["env"] == "two_room" and norm["action_dim"] == 2 and norm["proprio_dim"] == 2
    np.testing.assert_allclose(norm["action"]["mean"], stats.action_mean)
    assert norm["data"]["path"] == str(path.resolve()) and len(norm["data"]["held_out_episodes"]) == 1  # for lewm-eval
    capsys.readouterr()
    assert train_main([f"data.path={path}", f"out={tmp_path / 'bad'}", *tiny, "data.columns.pixels=frames"]) == 2
    err = capsys.readouterr().err
    assert "has no 'frames' column for pixels" in err and err.count("\n") == 1


# ---- collecting into stable-worldmodel's layout ---------------------------------------------------------------------
def test_collect_format_swm(tmp_path, capsys):
    out = tmp_path / "tr_swm.h5"
    args = ["env=two_room", "episode_len=10", "image_size=16", "progress=false", "seed=2"]
    assert collect_main([*args, "episodes=1", f"out={out}", "format=swm"]) == 0
    assert collect_main([*args, "episodes=2", f"out={out}", "format=swm", "append=true"]) == 0
    assert "holds 2 two_room episodes (22 frames)" in capsys.readouterr().out
    assert collect_main([*args, "episodes=2", f"out={tmp_path / 'tr.h5'}"]) == 0
    with h5py.File(out, "r") as f, h5py.File(tmp_path / "tr.h5", "r") as g:
        assert f["ep_len"].dtype == np.int32 and f["ep_offset"].dtype == np.int64
        np.testing.assert_array_equal(f["ep_len"][:], [11, 11])
        np.testing.assert_array_equal(f["ep_offset"][:], [0, 11])
        assert f["pixels"].chunks == (1, 16, 16, 3) and f["pixels"].compression == "gzip"
        assert f["action"].chunks == (1, 2) and f["state"].dtype == np.float64
        np.testing.assert_array_equal(f["ep_idx"][:], np.repeat([0, 1], 11))
        np.testing.assert_array_equal(f["step_idx"][:], np.tile(np.arange(11), 2))
        assert f.attrs["env"] == "two_room" and f.attrs["seed"] == 2 and "format_version" not in f.attrs
        for key in ROLES:  # the same episodes as lewm_fast's layout, appended or not
            np.testing.assert_array_equal(f[key][:], g[key][:], err_msg=key)
    for key, value in load_episode(out, -1).items():
        np.testing.assert_array_equal(value, load_episode(tmp_path / "tr.h5", 1)[key], err_msg=key)
    assert_same_windows(SequenceDataset(out, num_frames=2, frameskip=5), swm_reference_items(out, 5, 2))

    with h5py.File(out, "r+") as f:  # a writer killed after an episode's rows and ep_offset row, before ep_len
        for key in ("pixels", "action", "proprio", "state", "ep_idx", "step_idx"):
            f[key].resize(30, axis=0)
        f["ep_offset"].resize(3, axis=0)
        f["ep_offset"][2] = 22
    with h5py.File(out, "r") as f:
        assert read_layout(f).num_episodes == 2
    assert collect_main([*args, "episodes=3", f"out={out}", "format=swm", "append=true"]) == 0
    with h5py.File(out, "r") as f:
        assert f["pixels"].shape[0] == 33 and list(f["ep_offset"][:]) == [0, 11, 22]
    capsys.readouterr()
    assert collect_main([*args, "episodes=3", f"out={out}", "append=true"]) == 2  # format=lewm onto a swm file
    err = capsys.readouterr().err
    assert "holds stable-worldmodel episodes (format=swm), this run has format=lewm" in err and err.count("\n") == 1
    assert collect_main([*args, "episodes=3", f"out={tmp_path / 'x.h5'}", "format=zarr"]) == 2
    assert "format must be one of lewm, swm" in capsys.readouterr().err
    foreign = write_swm(tmp_path / "foreign.h5")
    assert collect_main([*args, "episodes=9", f"out={foreign}", "format=swm", "append=true"]) == 2
    assert "it records no env (was it written by lewm-collect?)" in capsys.readouterr().err


# ---- converting -----------------------------------------------------------------------------------------------------
def _episodes(path: Path) -> list[dict]:
    with h5py.File(path, "r") as f:
        layout = read_layout(f)
        return [{key: f[key][s:s + n] for key in ROLES} for s, n in zip(layout.starts, layout.lengths, strict=True)]


def test_convert_round_trip_is_bit_exact(tmp_path, collected, capsys):
    swm, back = tmp_path / "tr_swm.h5", tmp_path / "tr_back.h5"
    assert data_main(["convert", f"in={collected}", f"out={swm}", "to=swm", "progress=false"]) == 0
    assert data_main(["convert", f"in={swm}", f"out={back}", "to=lewm", "compression=lzf", "progress=false"]) == 0
    assert "holds 4 episodes (124 frames) in lewm_fast layout" in capsys.readouterr().out
    original, returned = _episodes(collected), _episodes(back)
    assert len(original) == len(returned) == 4
    for a, b in zip(original, returned, strict=True):
        for key in ROLES:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # NaN actions included
    with h5py.File(collected, "r") as f, h5py.File(back, "r") as g, h5py.File(swm, "r") as s:
        for key in ("env", "image_size", "seed", "policy", "episode_len"):
            assert f.attrs[key] == g.attrs[key] == s.attrs[key]
        assert g["pixels"].compression == "lzf" and list(g["episode_seeds"][:]) == [-1] * 4
        expected, streamed = read_stats(f), read_layout_stats(s, read_layout(s))
        for key, value in vars(read_stats(g)).items():  # moment rows written by the conversion
            np.testing.assert_allclose(value, getattr(expected, key), rtol=1e-9)
            np.testing.assert_allclose(value, getattr(streamed, key), rtol=1e-9)
    assert not list(tmp_path.glob("*.partial"))


def test_convert_a_stable_worldmodel_file(tmp_path, capsys):
    path = write_swm(tmp_path / "mapped.h5", rename={"pixels": "obs"}, drop=("state",))
    out = tmp_path / "mapped_lewm.h5"
    args = ["convert", f"in={path}", f"out={out}", "to=lewm", "columns.pixels=obs", "progress=false"]
    assert data_main(args) == 2
    assert "records no environment and a lewm_fast file needs one; pass env=<name>" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    assert data_main([*args, "env=two_room"]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["env"] == "two_room" and f["state"].shape == (sum(LENGTHS), 0)
        np.testing.assert_array_equal(f["episode_lengths"][:], LENGTHS)
        with h5py.File(path, "r") as src:
            np.testing.assert_array_equal(f["pixels"][:], src["obs"][:])
            np.testing.assert_array_equal(f["proprio"][:], src["proprio"][:])
    ds = SequenceDataset(out, num_frames=2, frameskip=5)
    assert ds.env_name == "two_room" and ds.state_dim == 0 and ds[0]["state"].shape == (2, 0)
    # a lewm file converted with its proprio and state left out, back to swm: the 0-wide columns are not written
    convert(out, tmp_path / "again.h5", "swm", progress=False)
    with h5py.File(tmp_path / "again.h5", "r") as f:
        assert "state" not in f and "proprio" in f and f.attrs["env"] == "two_room"


@pytest.mark.parametrize("args, message", [
    (["convert", "in=a.h5", "out=b.h5"], r"missing required argument\(s\): to=\.\.\."),
    (["convert", "in=a.h5", "out=b.h5", "to=zarr"], "to must be one of lewm, swm, got 'zarr'"),
    (["convert", "in=missing.h5", "out=b.h5", "to=swm"], "input file missing.h5 does not exist"),
    (["convert", "in=a.h5", "out=a.h5", "to=swm"], r"in and out are the same file"),
    (["convert", "in=a.h5", "out=b.h5", "to=swm", "colour=red"], "unknown key 'colour'; keys are in, out, to,"),
    (["convert", "in=a.h5", "out=b.h5", "to=swm", "overwrite=yes"], "overwrite must be true or false, got 'yes'"),
    (["convert", "in=a.h5", "out=b.h5", "to=swm", "compression=zstd"], "compression must be one of gzip, lzf"),
    (["convert", "in=a.h5", "out=b.h5", "to=swm", "columns.reward=r"], "unknown column role 'reward'"),
    (["convert", "in=a.h5", "out=exists.h5", "to=swm"], "exists.h5 already exists; pass overwrite=true"),
    (["convert", "in=notes.h5", "out=b.h5", "to=swm"], "cannot open notes.h5 as an HDF5 episode file"),
    (["convert", "in=a.h5", "out=b.h5", "to=swm", "env=pusht"], "records env='two_room', not 'pusht'"),
    (["convert", "a.h5"], "expected key=value, got 'a.h5'"),
    (["convert", "--in", "a.h5"], "unrecognised option '--in'"),
    (["merge", "in=a.h5"], "unknown command 'merge'"),
    ([], "missing command"),
])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    collect("two_room", 1, tmp_path / "a.h5", episode_len=4, image_size=16, progress=False)
    (tmp_path / "exists.h5").write_text("")
    (tmp_path / "notes.h5").write_text("not HDF5")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert data_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lewm-data: error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_help_and_overwrite(tmp_path, collected, capsys):
    assert data_main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("usage: lewm-data convert in=<file.h5> out=<file.h5> to=swm|lewm", "columns.<role>=<name>",
                 "pip install hdf5plugin", "compression=gzip"):
        assert text in out
    target = tmp_path / "t.h5"
    target.write_text("old")
    assert data_main(["convert", f"in={collected}", f"out={target}", "to=swm", "overwrite=true", "progress=false"]) == 0
    with h5py.File(target, "r") as f:
        assert read_layout(f).num_episodes == 4


def test_lewm_writer_accepts_zero_wide_columns(tmp_path):
    with EpisodeWriter.create(tmp_path / "z.h5", env="x", image_size=8, action_dim=1, proprio_dim=0,
                              state_dim=0) as writer:
        action = np.array([[0.5], [np.nan]], np.float32)
        writer.write_episode(np.zeros((2, 8, 8, 3), np.uint8), action, np.zeros((2, 0), np.float32),
                             np.zeros((2, 0)))
    ds = SequenceDataset(tmp_path / "z.h5", num_frames=1, frameskip=1)
    assert len(ds) == 2 and ds[0]["proprio"].shape == (1, 0)
