"""lewm-train: the loss goes down, fused and reference SIGReg give the same step, resume after a kill is exact,
bad config values fail with clear messages, the CLI trains end to end with --fused-sigreg."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lewm_fast import LeWM
from lewm_fast.cli.train import main as train_main
from lewm_fast.io import CHECKPOINT_DIR, list_checkpoints, read_normalization
from lewm_fast.training import Trainer, compose_train_config, warmup_cosine
from lewm_fast.training.trainer import epoch_batches

# a model small enough for a few CPU steps per second; 32 px frames, 4x4 patches of 8 px
TINY = [
    "model.image_size=32", "model.patch_size=8", "model.hidden_size=32", "model.num_hidden_layers=1",
    "model.num_attention_heads=2", "model.intermediate_size=64", "model.latent_dim=32", "model.depth=1",
    "model.heads=2", "model.dim_head=16", "model.mlp_dim=64", "model.proj_hidden_dim=64",
    "batch_size=8", "sigreg.num_proj=64", "log_every=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")



def cfg_for(tmp_path, *overrides, data_path=None):
    return compose_train_config([*TINY, f"out={tmp_path}", *([f"data.path={data_path}"] if data_path else []), *overrides])


@pytest.fixture(scope="session")
def two_room_h5(tmp_path_factory):
    """A small Two-Room episode file written by lewm_fast.data.collect: 4 episodes of 40 steps, 32 px frames."""
    from lewm_fast.data import collect

    path = tmp_path_factory.mktemp("data") / "two_room.h5"
    return collect("two_room", episodes=4, out=path, episode_len=40, image_size=32, seed=0, progress=False,
                   env_kwargs={"terminate_at_target": False})  # fixed-length episodes


@pytest.fixture(scope="session")
def dataset(two_room_h5):
    from lewm_fast.data import SequenceDataset

    return SequenceDataset(two_room_h5, num_frames=4, frameskip=5, image_size=32)


class FirstItems(torch.utils.data.Dataset):
    """The first n items of a dataset (keeps its .stats and .env_name)."""

    def __init__(self, dataset, n):
        self.dataset, self.n, self.stats, self.env_name = dataset, n, dataset.stats, dataset.env_name

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.dataset[i]


# ---------------------------------------------------------------------------------------------------- learning
def test_few_steps_lower_the_loss(tmp_path, dataset):
    dataset = FirstItems(dataset, 48)  # 6 steps per epoch
    cfg = cfg_for(tmp_path, "epochs=6", "optim.lr=3e-3", "optim.warmup_fraction=0.1", "model.dropout=0.0")
    summary = Trainer(cfg, dataset).fit()
    losses = [r["loss"] for r in summary["history"]]
    assert len(losses) == summary["global_step"] == 6 * (len(dataset) // 8)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert summary["epochs"][-1]["loss"] < summary["epochs"][0]["loss"]
    # outputs: stable-worldmodel folder + trainer state, JSON log, PNG plot
    ckpts = list_checkpoints(tmp_path)  # one per epoch, the newest keep_checkpoints=3 kept
    spe = len(dataset) // 8
    assert [c.name for c in ckpts] == [f"step_{e * spe:08d}" for e in (4, 5, 6)]
    model = LeWM.from_pretrained(ckpts[-1])
    assert model.action_dim == 10 and model.config["encoder"]["image_size"] == 32
    norm = read_normalization(ckpts[-1])
    assert norm["env"] == "two_room" and norm["frameskip"] == 5 and len(norm["action"]["std"]) in (2, 10)
    assert norm["action_dim"] == 2 and norm["proprio_dim"] == len(norm["proprio"]["mean"])  # checked by lewm-eval
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["global_step"] == summary["global_step"] and len(log["history"]) == summary["global_step"]
    assert {"loss", "pred_loss", "sigreg_loss", "lr", "grad_norm"} <= set(log["history"][0])
    assert Image.open(tmp_path / "loss_curves.png").size[0] > 500


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_ratio=0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_epoch_batches_are_seeded_full_and_disjoint():
    a, b = epoch_batches(50, 8, seed=3, epoch=1), epoch_batches(50, 8, seed=3, epoch=1)
    assert a == b and len(a) == 6 and all(len(x) == 8 for x in a)
    flat = [i for batch in a for i in batch]
    assert len(set(flat)) == 48
    assert epoch_batches(50, 8, seed=3, epoch=2) != a


# ---------------------------------------------------------------------------------------------------- fused SIGReg
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fused_and_reference_sigreg_give_the_same_training_step(tmp_path, dataset, backend):
    from lewm_fast.backends import csrc_available, triton_available

    if backend == "triton" and not triton_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not available")
    if backend == "cpu" and not csrc_available():
        pytest.skip("C++ extension not built")
    ref = Trainer(cfg_for(tmp_path / "ref"), dataset)
    fused = Trainer(cfg_for(tmp_path / "fused", "sigreg.fused=true", f"sigreg.backend={backend}"), dataset)
    fused.model.load_state_dict(ref.model.state_dict())
    assert type(fused.sigreg).__module__ == "lewm_fast.ops.sigreg" and fused.sigreg_backend == backend
    batch = torch.utils.data.default_collate([dataset[i] for i in range(8)])

    grads = {}
    for name, trainer in (("ref", ref), ("fused", fused)):
        torch.manual_seed(123)  # same dropout masks and the same random projection A
        pixels, actions = trainer._inputs(batch)
        from lewm_fast.reference import lewm_loss

        terms = lewm_loss(trainer.model, pixels, actions, trainer.sigreg, 0.09)
        trainer.model.zero_grad()
        terms.loss.backward()
        grads[name] = (terms, {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None})
    (t_ref, g_ref), (t_fused, g_fused) = grads["ref"], grads["fused"]
    for a, b in zip(t_ref, t_fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert set(g_ref) == set(g_fused) and len(g_ref) > 20
    for k in g_ref:
        torch.testing.assert_close(g_fused[k], g_ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")

    # and the trainer's own step (autocast context, clipping): same loss terms and gradient norm. (Parameters after
    # the first AdamW step are not compared: that step is ~lr * sign(grad), which turns rounding noise in near-zero
    # gradients, e.g. of the attention key biases that softmax ignores, into differences of order lr.)
    torch.manual_seed(7)
    ref_terms, ref_norm = ref.train_step(batch)
    torch.manual_seed(7)
    fused_terms, fused_norm = fused.train_step(batch)
    for a, b in zip(ref_terms, fused_terms):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_norm, ref_norm, rtol=1e-5, atol=1e-6)


def test_precision_fp32_on_cpu_and_bf16_autocast_step(tmp_path, dataset):
    from lewm_fast.training.trainer import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    trainer = Trainer(cfg_for(tmp_path, "precision=bf16", "sigreg.fused=true"), dataset)  # the CUDA recipe, on CPU
    batch = torch.utils.data.default_collate([dataset[i] for i in range(8)])
    terms, grad_norm = trainer.train_step(batch)
    assert all(torch.isfinite(t) for t in terms) and torch.isfinite(grad_norm)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast: fp32 master weights


# ---------------------------------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


RESUME = ("epochs=3", "keep_checkpoints=0", "model.dropout=0.1", "batch_size=4")


@pytest.fixture(scope="module")
def resume_data(dataset):
    return FirstItems(dataset, 16)  # 4 steps per epoch


@pytest.fixture(scope="module")
def resume_val(dataset):
    return FirstItems(dataset, 6)  # a held-out set: its evaluation must not disturb an exact resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, resume_data, resume_val):
    trainer = Trainer(cfg_for(tmp_path_factory.mktemp("whole"), *RESUME), resume_data, resume_val)
    return trainer, trainer.fit()


def run_until_killed(cfg, dataset, kill_at_step, val_dataset=None):
    trainer = Trainer(cfg, dataset, val_dataset)
    step = trainer.train_step

    def dying_step(batch):
        if trainer.global_step == kill_at_step:
            raise Killed
        return step(batch)

    trainer.train_step = dying_step
    with pytest.raises(Killed):
        trainer.fit()


@pytest.mark.parametrize("save_every,kill_at,resume_from", [(0, 6, 4), (3, 11, 9)],
                         ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, resume_data, resume_val, uninterrupted, save_every,
                                                            kill_at, resume_from):
    whole, summary_whole = uninterrupted
    cfg = (*RESUME, f"save_every_steps={save_every}")
    run_until_killed(cfg_for(tmp_path, *cfg), resume_data, kill_at, resume_val)
    assert list_checkpoints(tmp_path)[-1].name == f"step_{resume_from:08d}"
    # an interrupted save leaves a temporary folder: it must be ignored and cleaned up
    partial = tmp_path / CHECKPOINT_DIR / ".tmp-step_99999999"
    partial.mkdir()
    (partial / "weights.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="resume=true"):
        Trainer(cfg_for(tmp_path, *cfg), resume_data).fit()
    resumed = Trainer(cfg_for(tmp_path, *cfg, "resume=true"), resume_data, resume_val)
    summary_resumed = resumed.fit()
    assert not partial.exists()
    assert [e["val_pred_loss"] for e in summary_resumed["epochs"]] == [e["val_pred_loss"] for e in summary_whole["epochs"]]

    assert summary_resumed["global_step"] == summary_whole["global_step"] == 12
    steps = [r["step"] for r in summary_resumed["history"]]
    assert steps == list(range(1, 13))  # no lost or repeated step
    assert [r["loss"] for r in summary_resumed["history"]] == [r["loss"] for r in summary_whole["history"]]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    opt_a, opt_b = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in opt_a:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][k], opt_b[i][k])
    assert resumed.scheduler.last_epoch == whole.scheduler.last_epoch == 12


def test_resume_refuses_a_different_model_or_dataset(tmp_path, dataset, resume_data):
    Trainer(cfg_for(tmp_path, "epochs=1", "batch_size=4"), resume_data).fit()
    with pytest.raises(ValueError, match="trained with model="):
        Trainer(cfg_for(tmp_path, "epochs=2", "batch_size=4", "resume=true", "model.depth=2"), resume_data).fit()
    with pytest.raises(ValueError, match="dataset of 16 sequences"):
        Trainer(cfg_for(tmp_path, "epochs=2", "batch_size=4", "resume=true"), FirstItems(dataset, 20)).fit()


# ---------------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_size=1", "batch_size must be an integer >= 2"),
        ("epochs=0", "epochs must be an integer >= 1"),
        ("optim.lr=-1e-3", "optim.lr must be a number > 0"),
        ("optim.warmup_fraction=1.5", "optim.warmup_fraction must be a number >= 0.0 and <= 1.0"),
        ("optim.betas=[0.9,1.5]", "optim.betas must be two numbers"),
        ("optim.grad_clip=0", "optim.grad_clip must be a number > 0"),
        ("model.image_size=60", "multiple of model.patch_size"),
        ("model.num_attention_heads=3", "divisible by model.num_attention_heads"),
        ("model.encoder_size=gigantic", "model.encoder_size must be one of"),
        ("sigreg.backend=gpu", "sigreg.backend must be one of"),
        ("sigreg.fused=maybe", "sigreg.fused must be true or false"),
        ("precision=fp16", "precision must be one of"),
        ("device=tpu", "device must be one of"),
        ("data.num_frames=9", "data.num_frames (9) must be <= model.history_size + 1"),
        ("resume=true", "resume=true needs out="),
        ("dry_run=model", "dry_run must be null (train) or loader"),
        ("compile=maybe", "compile must be true or false"),
    ],
)
def test_bad_config_values_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+").replace(".", r"\.")):
        compose_train_config([override])


def test_cli_reports_bad_values_without_a_traceback(capsys, tmp_path):
    assert train_main(["batch_size=0"]) == 2
    assert "batch_size must be an integer >= 2, got 0" in capsys.readouterr().err
    assert train_main(["--fused-sigrg"]) == 2
    assert "unknown flag '--fused-sigrg'" in capsys.readouterr().err
    assert train_main(["nonsense=1"]) == 2
    assert capsys.readouterr().err == "lewm-train: error: unknown key 'nonsense' (--help lists every key)\n"
    assert train_main([f"data.path={tmp_path / 'missing.h5'}", f"out={tmp_path / 'run'}"]) == 2
    assert "lewm-collect env=two_room" in capsys.readouterr().err


def test_cli_help_lists_flags_groups_and_defaults(capsys):
    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("--fused-sigreg", "preset     cpu*, paper", "model      cpu_small*, paper", "two_room*", "batch_size: 16",
                 "weight: 0.09"):
        assert text in out


def test_dry_run_loader_reports_samples_per_second_and_writes_nothing(tmp_path, two_room_h5, capsys):
    run = tmp_path / "run"
    args = [f"data.path={two_room_h5}", f"out={run}", *TINY, "dry_run=loader", "dry_run_batches=3", "data.num_workers=1"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert re.match(r"data loader: [0-9.]+ samples/s \(24 samples in [0-9.]+ s over 1 process\(es\), batches of 8 per "
                    r"process, after [0-9.]+ s to the first batch; data.num_workers=1 per process, pinned memory off, "
                    r"copied to cpu\)", out), out
    assert not run.exists()


def test_fused_flag_and_paper_preset_compose():
    from lewm_fast.cli.train import FLAGS
    from lewm_fast.config import parse_cli

    overrides, _, _ = parse_cli(["--fused-sigreg", "preset=paper"], FLAGS)
    cfg = compose_train_config(overrides)
    assert cfg.sigreg.fused is True and cfg.batch_size == 128 and cfg.model.image_size == 224
    assert cfg.model.depth == 6 and cfg.model.hidden_size is None and cfg.optim.lr == 5e-5 and cfg.optim.grad_clip == 1.0
    from lewm_fast import build_model
    from lewm_fast.training import model_config

    n = sum(p.numel() for p in build_model(model_config(cfg, action_dim=2)).parameters())
    assert 17e6 < n < 20e6  # the paper's ~18M-parameter LeWM


def test_cli_trains_end_to_end_with_fused_sigreg(tmp_path, two_room_h5, capsys):
    rc = train_main(["--fused-sigreg", f"data.path={two_room_h5}", f"out={tmp_path}", *TINY, "epochs=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SIGReg fused" in out and "loss: epoch 1" in out
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["sigreg"]["fused"] is True and log["epochs_done"] == 1
    LeWM.from_pretrained(list_checkpoints(tmp_path)[-1])


# ---------------------------------------------------------------------------------------------------- CLI hardening
@pytest.mark.parametrize("args", [["+bogus=1"], ["++bogus=1"], ["+sigreg.extra=2"], ["+x.y=1", "epochs=1"]])
def test_cli_refuses_added_keys_in_every_form(capsys, args):
    """hydra accepts +key / ++key by adding the key, which nothing reads: refused like an unknown key=value."""
    assert train_main([*args, "--cfg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lewm-train: error: unknown key") and "nothing would read" in err and err.count("\n") == 1


@pytest.fixture
def finished_run(tmp_path, two_room_h5):
    """A one-epoch run started with the fused SIGReg and the tiny model (settings a bare resume must keep)."""
    run = tmp_path / "run"
    assert train_main(["--fused-sigreg", f"data.path={two_room_h5}", f"out={run}", *TINY, "epochs=1"]) == 0
    return run


def test_bare_resume_continues_the_run_with_its_saved_settings(finished_run, capsys):
    capsys.readouterr()
    assert train_main([f"out={finished_run}", "resume=true", "--cfg"]) == 0
    shown = capsys.readouterr().out
    assert "fused: true" in shown and "num_proj: 64" in shown and "image_size: 32" in shown
    assert train_main([f"out={finished_run}", "resume=true", "epochs=2"]) == 0  # extending a run is allowed
    log = json.loads((finished_run / "train_log.json").read_text())
    assert log["epochs_done"] == 2 and log["sigreg"]["fused"] is True
    assert log["config"]["sigreg"]["num_proj"] == 64 and log["config"]["epochs"] == 2
    assert log["global_step"] == 2 * log["steps_per_epoch"]


def test_resume_refuses_changed_settings_naming_old_and_new(finished_run, capsys):
    before = (finished_run / "train_config.yaml").read_text()
    capsys.readouterr()
    rc = train_main([f"out={finished_run}", "resume=true", "sigreg.weight=0.9", "sigreg.num_proj=32", "optim.lr=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("lewm-train: error: cannot resume")
    for change in ("sigreg.weight 0.09 -> 0.9", "sigreg.num_proj 64 -> 32", "optim.lr 0.001 -> 0.5"):
        assert change in err
    assert "only epochs, log_every" in err
    assert (finished_run / "train_config.yaml").read_text() == before  # nothing overwritten
    assert train_main([f"out={finished_run}", "resume=true", "data=pusht"]) == 2  # a group choice changing data.env
    assert "data.env 'two_room' -> 'pusht'" in capsys.readouterr().err


def test_truncated_trainer_state_names_the_fallback_checkpoint(tmp_path, two_room_h5, capsys):
    run = tmp_path / "run"
    assert train_main([f"data.path={two_room_h5}", f"out={run}", *TINY, "epochs=2"]) == 0
    first, last = list_checkpoints(run)[-2:]
    state = last / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert train_main([f"out={run}", "resume=true", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lewm-train: error: cannot read {state} (truncated or corrupt") and err.count("\n") == 1
    assert f"the previous checkpoint {first} is complete" in err and f"mv {last} " in err


def test_unreadable_dataset_chunk_names_file_episode_and_step(tmp_path, two_room_h5, capsys):
    """A corrupt pixel chunk mid-epoch: one line naming the file, episode and steps, exit 2, the last checkpoint."""
    import h5py
    import shutil

    broken = tmp_path / "broken.h5"
    shutil.copy(two_room_h5, broken)
    with h5py.File(broken, "r") as f:
        start = int(f["episode_starts"][2])
        offset, size = f["pixels"].id.get_chunk_info_by_coord((start + 10, 0, 0, 0))[2:]
    with open(broken, "r+b") as raw:  # overwrite frame start+10's compressed chunk: gzip then fails to decode it
        raw.seek(offset)
        raw.write(b"\xff" * size)
    rc = train_main([f"data.path={broken}", f"out={tmp_path / 'run'}", *TINY, "epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot read {broken}: episode 2, steps" in err and "does not skip" in err
    assert "last checkpoint: None" in err and "Traceback" not in err


def test_opening_a_file_that_is_not_hdf5_names_it(tmp_path, capsys):
    from lewm_fast.data import EpisodeFileError, SequenceDataset

    bad = tmp_path / "notes.h5"
    bad.write_text("not an HDF5 file")
    with pytest.raises(EpisodeFileError, match=f"cannot open {bad} as an HDF5 episode file .*file signature not found"):
        SequenceDataset(bad)
    assert train_main([f"data.path={bad}", f"out={tmp_path / 'run'}"]) == 2
    assert f"cannot open {bad}" in capsys.readouterr().err


def test_nan_actions_inside_episodes_are_reported_once_or_refused(tmp_path, two_room_h5, capsys):
    """stable-worldmodel's convention (its training replaces NaN actions by 0) by default, reported once with the file,
    episodes and steps; data.nan_actions=error refuses the file in one line."""
    import shutil

    import h5py

    from lewm_fast.training import open_datasets

    path = tmp_path / "nan.h5"
    shutil.copy(two_room_h5, path)
    with h5py.File(path, "r+") as f:
        start = int(f["episode_starts"][1])
        f["action"][start + 6] = np.nan
    train, _ = open_datasets(cfg_for(tmp_path, data_path=path))
    out = capsys.readouterr().out
    assert out == (f"note: {path} holds 1 NaN action step(s) before the last step of 1 episode(s) (episode 1 step 6); "
                   "they are read as 0, as stable-worldmodel's training does (data.nan_actions=error refuses such a "
                   "file)\n")
    open_datasets(cfg_for(tmp_path, data_path=two_room_h5))
    assert capsys.readouterr().out == ""
    assert train_main([f"data.path={path}", f"out={tmp_path / 'run'}", *TINY, "data.nan_actions=error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lewm-train: error: {path} holds 1 NaN action step(s)") and err.count("\n") == 1
    assert "data.nan_actions=error refuses such a file" in err and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"data.nan_actions must be one of \['zero', 'error'\]"):
        compose_train_config(["data.nan_actions=skip"])


def test_a_lewm_file_without_its_pixels_column_is_one_line(tmp_path, two_room_h5, capsys):
    import shutil

    import h5py

    path = tmp_path / "no_pixels.h5"
    shutil.copy(two_room_h5, path)
    with h5py.File(path, "r+") as f:
        del f["pixels"]
    assert train_main([f"data.path={path}", f"out={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lewm-train: error: {path} is a lewm_fast episode file (format_version attribute) but has "
                          "no 'pixels' column") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------- held-out loss
def test_episode_split_is_seeded_disjoint_and_keeps_training_data():
    from lewm_fast.data import split_episodes

    train, val = split_episodes(20, 0.1, seed=3)
    assert len(val) == 2 and sorted(train + val) == list(range(20)) and not set(train) & set(val)
    assert split_episodes(20, 0.1, seed=3) == (train, val) and split_episodes(20, 0.1, seed=4) != (train, val)
    assert split_episodes(4, 0.1, 0)[1] != [] and len(split_episodes(2, 0.9, 0)[0]) == 1  # at least one of each
    assert split_episodes(20, 0.0, 0) == (list(range(20)), [])


def test_held_out_loss_per_epoch_and_lr_panel(tmp_path, two_room_h5, capsys):
    rc = train_main([f"data.path={two_room_h5}", f"out={tmp_path}", *TINY, "epochs=2", "data.val_fraction=0.25"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out prediction MSE (" in out
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["val_sequences"] > 0 and log["dataset_sequences"] > 0
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and all(e["val_pred_loss"] > 0 for e in log["epochs"])
    # 4 episodes of 41 frames: one held out, its 26 windows are not trained on
    assert log["val_sequences"] == 26 and log["dataset_sequences"] == 3 * 26
    from lewm_fast.training.report import plot_losses

    titles = plot_losses(tmp_path / "again.png", log["history"], 0.09, [])
    assert titles[-1] == "learning rate" and len(titles) == 4
    assert Image.open(tmp_path / "loss_curves.png").size[0] > 1700  # four panels


def test_runs_saved_before_the_split_resume_without_one(finished_run):
    """A run whose saved config predates data.val_fraction trained on every episode: resuming keeps that."""
    import torch as _torch

    from lewm_fast.training.config import resume_config

    latest = list_checkpoints(finished_run)[-1]
    state = _torch.load(latest / "trainer_state.pt", weights_only=True)
    del state["config"]["data"]["val_fraction"]
    _torch.save(state, latest / "trainer_state.pt")
    assert resume_config([f"out={finished_run}", "resume=true"]).data.val_fraction == 0.0
