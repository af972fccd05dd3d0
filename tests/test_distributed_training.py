"""lewm-train data-parallel: two gloo ranks on CPU train like one process on the concatenated batch (one step: same
loss terms, SIGReg value, gradients and parameters; same held-out loss), a DDP run killed and resumed reproduces the
uninterrupted DDP run exactly, a DDP checkpoint resumes on one process with the same step count, and
``torchrun -m lewm_fast.cli.train`` trains end to end (rank 0 writing) and reports a bad batch split in one line.

The two ranks run every scenario in one ``torch.multiprocessing.spawn`` (module fixture ``ddp``), saving what rank
0 and rank 1 saw; the tests compare that with single-process runs here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_training import TINY, FirstItems, Killed, run_until_killed, two_room_h5  # noqa: F401 (a fixture)

from lewm_fast.io import list_checkpoints
from lewm_fast.training import Trainer, compose_train_config, epoch_batches
from lewm_fast.training.distributed import Ranks, SyncBatchNorm1d, local_batch_size
from lewm_fast.training.trainer import EpochBatchSampler

pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available"),
              pytest.mark.usefixtures("one_thread")]

WORLD = 2
# one step on a global batch of 8 (4 rows per rank); no dropout, so both sides draw nothing but the SIGReg projection.
# AdamW's first step is lr * g / (|g| + eps): with the default eps 1e-8 that is lr * sign(g), which turns fp32 noise in
# gradients that are exactly 0 (biases ahead of BatchNorm: ~1e-6 on one side, ~1e-9 on the other) into parameter
# differences of 2 * lr; eps 1e-4 keeps it below 1e-4 * lr.
STEP = ("model.dropout=0.0", "optim.lr=1e-3", "optim.eps=1e-4")
# 16 sequences, batch 4: 4 steps per epoch, 12 in all; checkpoints every 3 steps and at each epoch's end
RESUME = ("epochs=3", "keep_checkpoints=0", "model.dropout=0.1", "batch_size=4", "save_every_steps=3")
KILL_AT, RESUME_FROM = 7, 6


def _cfg(out, *overrides, data_path=None):
    return compose_train_config([*TINY, f"out={out}", *([f"data.path={data_path}"] if data_path else []), *overrides])


def _datasets(path):
    from lewm_fast.data import SequenceDataset

    full = SequenceDataset(path, num_frames=4, frameskip=5, image_size=32)
    return FirstItems(full, 16), FirstItems(full, 6)


def _global_batch(dataset, size: int = 8):
    return torch.utils.data.default_collate([dataset[i] for i in range(size)])


def _rows(batch, rank: int, world: int):
    n = len(batch["pixels"]) // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def _step_result(trainer: Trainer, batch) -> dict:
    """The held-out loss of the initial model, then one step: its loss terms, gradients and the model after it."""
    val = trainer.validate()
    terms, grad_norm = trainer.train_step(batch)
    return {
        "terms": torch.stack(list(terms)), "grad_norm": grad_norm, "val": val,
        "grads": {k: p.grad.clone() for k, p in trainer.model.named_parameters()},
        "state": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


def _fit_result(trainer: Trainer, summary: dict) -> dict:
    return {"state": trainer.model.state_dict(), "losses": [r["loss"] for r in summary["history"]],
            "steps": [r["step"] for r in summary["history"]], "val": [e["val_pred_loss"] for e in summary["epochs"]],
            "exp_avg": [s["exp_avg"] for s in trainer.optimizer.state_dict()["state"].values()]}


def _worker(rank: int, world: int, init_file: str, root: str, data_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train, val = _datasets(data_path)
        out = {}
        for sigreg in ("reference", "fused"):
            trainer = Trainer(_cfg(f"{root}/step-{sigreg}", *STEP, f"sigreg.fused={sigreg == 'fused'}",
                                   "sigreg.backend=auto"), train, val)
            out[f"step-{sigreg}"] = _step_result(trainer, _rows(_global_batch(train), rank, world))
        whole = Trainer(_cfg(f"{root}/whole", *RESUME), train, val)
        out["whole"] = _fit_result(whole, whole.fit())
        run_until_killed(_cfg(f"{root}/killed", *RESUME), train, KILL_AT, val)
        if rank == 0:  # the run as the kill left it, to resume on one process in the test
            shutil.copytree(f"{root}/killed", f"{root}/killed-copy")
        resumed = Trainer(_cfg(f"{root}/killed", *RESUME, "resume=true"), train, val)
        out["resumed"] = _fit_result(resumed, resumed.fit())
        torch.save(out, os.path.join(root, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, two_room_h5):  # noqa: F811
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(root / "init"), str(root), str(two_room_h5)), nprocs=WORLD, join=True)
    return root, [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------------- one step
@pytest.mark.parametrize("sigreg", ["reference", "fused"])
def test_ddp_step_equals_the_single_process_step_on_the_global_batch(tmp_path, two_room_h5, ddp, sigreg):  # noqa: F811
    """fp32 on both sides. Loss terms (the SIGReg value of the concatenated batch included) to rtol 1e-5; the gradient
    norm to rtol 1e-4 and the (clipped, rank-averaged) gradients to atol 2e-4 of the largest: here the fp32
    single-process gradient norm itself is ~6e-5 (relative) off the float64 one, the DDP one ~1e-6. Parameters and
    BatchNorm running statistics after the AdamW step (which moves each parameter by ~lr = 1e-3) to atol 1e-4 (measured:
    2e-5 on a few entries whose gradient is ~eps); the held-out loss (sharded over the ranks, all-reduced) to rtol 1e-6."""
    _, results = ddp
    train, val = _datasets(two_room_h5)
    single = Trainer(_cfg(tmp_path, *STEP, f"sigreg.fused={sigreg == 'fused'}", "sigreg.backend=auto"), train, val)
    batch = _global_batch(train)
    local = _rows(batch, 0, WORLD)
    assert len(local["pixels"]) == 4 and torch.equal(local["action"], batch["action"][:4])
    expected = _step_result(single, batch)
    rank0, rank1 = (r[f"step-{sigreg}"] for r in results)
    # rank 0's pred loss is that of its rows; the loop logs the mean over ranks (= the global batch's)
    terms = (rank0["terms"] + rank1["terms"]) / 2
    torch.testing.assert_close(terms, expected["terms"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rank0["terms"][2], expected["terms"][2], rtol=1e-5, atol=1e-6)  # SIGReg: global value
    torch.testing.assert_close(rank0["grad_norm"], expected["grad_norm"], rtol=1e-4, atol=0)
    assert rank0["val"] == pytest.approx(expected["val"], rel=1e-6) and rank1["val"] == rank0["val"]
    scale = max(float(g.abs().max()) for g in expected["grads"].values())
    for k, g in expected["grads"].items():
        torch.testing.assert_close(rank0["grads"][k], g, rtol=0, atol=2e-4 * scale, msg=lambda m, k=k: f"{k}: {m}")
    for k, v in expected["state"].items():
        torch.testing.assert_close(rank0["state"][k], v, rtol=0, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        assert torch.equal(rank0["state"][k], rank1["state"][k]), k  # the ranks stay identical


# ---------------------------------------------------------------------------------------------------- resume
def test_ddp_kill_and_resume_reproduces_the_uninterrupted_ddp_run(ddp):
    _, results = ddp
    for rank, result in enumerate(results):
        whole, resumed = result["whole"], result["resumed"]
        assert resumed["steps"] == whole["steps"] == list(range(1, 13))
        assert resumed["losses"] == whole["losses"] and resumed["val"] == whole["val"], rank
        for k, v in whole["state"].items():
            assert torch.equal(resumed["state"][k], v), (rank, k)
        for a, b in zip(whole["exp_avg"], resumed["exp_avg"]):
            assert torch.equal(a, b)
    for k, v in results[0]["whole"]["state"].items():
        assert torch.equal(results[1]["whole"]["state"][k], v), k


def test_a_ddp_checkpoint_resumes_on_one_process_with_the_same_steps(ddp, two_room_h5):  # noqa: F811
    root, results = ddp
    run = root / "killed-copy"
    assert list_checkpoints(run)[-1].name == f"step_{RESUME_FROM:08d}"
    state = torch.load(list_checkpoints(run)[-1] / "trainer_state.pt", weights_only=True)
    assert len(state["rank_rng"]) == WORLD - 1
    train, val = _datasets(two_room_h5)
    resumed = Trainer(_cfg(run, *RESUME, "resume=true"), train, val)
    summary = resumed.fit()
    assert summary["global_step"] == 12 and summary["world_size"] == 1
    assert [r["step"] for r in summary["history"]] == list(range(1, 13))
    assert [r["loss"] for r in summary["history"][:RESUME_FROM]] == results[0]["whole"]["losses"][:RESUME_FROM]
    assert resumed.scheduler.last_epoch == 12 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


# ---------------------------------------------------------------------------------------------------- pieces
def test_ranks_split_every_global_batch_in_rank_order():
    world = 4
    samplers = [EpochBatchSampler(50, 8, seed=3, ranks=Ranks(rank, world)) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(2, start=1)
    expected = epoch_batches(50, 8, seed=3, epoch=2)[1:]
    assert all(len(s) == len(expected) for s in samplers)
    assert [sum((list(s)[i] for s in samplers), []) for i in range(len(expected))] == expected
    with pytest.raises(ValueError, match="batch_size=6 does not split over the 4 training processes"):
        local_batch_size(6, Ranks(0, 4))


def test_sync_batchnorm_is_batchnorm_on_one_process():
    torch.manual_seed(0)
    bn, sync = torch.nn.BatchNorm1d(5), SyncBatchNorm1d(5)
    x = torch.randn(7, 5) * 3 + 1
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)


# ---------------------------------------------------------------------------------------------------- torchrun
def _torchrun(*args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "lewm_fast.cli.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_trains_with_rank_0_writing_and_refuses_a_bad_split(tmp_path, two_room_h5):  # noqa: F811
    run = tmp_path / "run"
    done = _torchrun(f"data.path={two_room_h5}", f"out={run}", *TINY, "epochs=1", "device=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 9 steps") == 1 and "on cpu x 2 processes" in done.stdout
    log = json.loads((run / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["global_step"] == log["steps_per_epoch"] == 9
    assert [c.name for c in list_checkpoints(run)] == ["step_00000009"]
    bad = _torchrun(f"data.path={two_room_h5}", f"out={tmp_path / 'bad'}", *TINY, "batch_size=7", "device=cpu")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("lewm-train: error:")]
    assert bad.returncode != 0 and errors == [
        "lewm-train: error: batch_size=7 does not split over the 2 training processes: each takes batch_size / 2 rows "
        "of every batch; pass a multiple of 2"]
