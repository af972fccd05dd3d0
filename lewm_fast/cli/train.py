"""``lewm-train``: train LeWM from pixels (SPEC §2) on a dataset written by ``lewm-collect``.

Hydra-style command line: ``key=value`` overrides of ``lewm_fast/configs/train.yaml`` and its groups, plus the literal
flags ``--fused-sigreg`` (= ``sigreg.fused=true``), ``--cfg`` (print the composed config) and ``--help``.

Under torchrun (``torchrun --nproc_per_node=N -m lewm_fast.cli.train ...``, or ``--no-python lewm-train``) every
process runs this; they train data-parallel (``lewm_fast.training.distributed``). Errors are printed once per machine
(by its LOCAL_RANK 0), except a rank's own data errors, which that rank prints.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

PROG = "lewm-train"
FLAGS = {"--fused-sigreg": "sigreg.fused=true"}
GROUPS = {"preset": "train/preset", "model": "train/model", "data": "train/data", "optim": "train/optim"}
DESCRIPTION = (
    "Train LeWM from pixels: loss = MSE(next latent) + sigreg.weight x SIGReg, AdamW with warmup + cosine, grad clip,\n"
    "bf16 autocast on CUDA (fp32 on CPU), on all but data.val_fraction of the episodes (held out for a per-epoch\n"
    "prediction loss). Writes checkpoints every epoch to <out>/checkpoints/step_*/ (stable-worldmodel folder +\n"
    "trainer_state.pt), then <out>/train_log.json and <out>/loss_curves.png. `out=RUN resume=true` continues a killed\n"
    "run with its saved settings; only epochs, log_every, save_every_steps, keep_checkpoints, device, compile,\n"
    "data.path, data.num_workers and data.nan_actions may change on resume, and it may run on another number of\n"
    "processes.\n"
    "preset=cpu (default) trains the small 64 px model on CPU in minutes; preset=paper is the paper recipe for a GPU.\n"
    "Several GPUs or machines: run it under torchrun (data parallel; batch_size stays the global batch, split evenly\n"
    "over the processes; NCCL with one GPU per process on CUDA, gloo on CPU). dry_run=loader times the data loader alone."
)
EXAMPLES = (
    "lewm-train --fused-sigreg data.path=data/two_room.h5 out=runs/quickstart",
    "lewm-train preset=paper data=pusht data.path=data/pusht.h5 out=runs/pusht   # GPU: paper model, batch 128, bf16",
    "lewm-train out=runs/quickstart resume=true                                  # continue a killed run",
    "lewm-train out=runs/quickstart resume=true epochs=8                         # extend a finished run",
    "torchrun --standalone --nproc_per_node=4 -m lewm_fast.cli.train preset=paper data.path=data/pusht.h5 out=runs/p4",
    "lewm-train preset=paper data.path=data/pusht.h5 dry_run=loader data.num_workers=8   # loader samples/s only",
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lewm_fast.config import compose_config, format_help, one_line, parse_cli
    from lewm_fast.training.config import resume_config, validate_train_config
    from lewm_fast.training.distributed import process_group, torchrun_env

    launch = None
    try:
        launch = torchrun_env()
        overrides, wants_help, wants_cfg = parse_cli(argv, FLAGS)
        if wants_help:
            _say(launch, format_help(PROG, DESCRIPTION, "train", GROUPS, FLAGS, EXAMPLES), sys.stdout)
            return 0
        cfg = compose_config("train", overrides)
        if cfg.resume:  # the run's saved settings, with the few a resume may change
            cfg = resume_config(overrides)
        if wants_cfg:
            from omegaconf import OmegaConf

            _say(launch, OmegaConf.to_yaml(cfg), sys.stdout)
            return 0
        validate_train_config(cfg)
        from lewm_fast.backends import resolve_device

        with process_group(resolve_device(cfg.device)):
            return _run(cfg, launch)
    except (ValueError, OSError, HydraException, OmegaConfBaseException) as exc:
        _say(launch, f"{PROG}: error: {one_line(str(exc))}")
        return 2


def _say(launch, text: str, stream=None) -> None:
    """Print ``text`` (to stderr by default) once per machine: outside torchrun, or on LOCAL_RANK 0."""
    if launch is None or launch.local_rank == 0:
        print(text, file=stream or sys.stderr)


def _run(cfg, launch) -> int:
    """Train (or time the loader, ``dry_run=loader``) on this process; -> exit status."""
    from lewm_fast.data.h5format import EpisodeReadError
    from lewm_fast.config import one_line
    from lewm_fast.io import latest_checkpoint
    from lewm_fast.training.trainer import Trainer, loader_throughput

    if cfg.dry_run == "loader":
        _print_loader(loader_throughput(cfg, int(cfg.dry_run_batches), float(cfg.dry_run_seconds)), launch)
        return 0
    trainer = Trainer(cfg)
    trainer.prepare()
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        _say(launch, f"\n{PROG}: interrupted; continue from the last checkpoint with: {PROG} out={trainer.run_dir} "
                     "resume=true")
        return 130
    except EpisodeReadError as exc:  # damaged data (in this rank's share of it): not a bug of lewm_fast
        where = "" if launch is None else f"rank {launch.rank}: "
        print(f"{PROG}: error: {where}{one_line(str(exc))} (last checkpoint: {latest_checkpoint(trainer.run_dir)})",
              file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a diverged loss (every rank sees the same all-reduced value)
        _say(launch, f"{PROG}: error: {one_line(str(exc))} (last checkpoint: {latest_checkpoint(trainer.run_dir)})")
        return 2
    if trainer.ranks.is_main:
        _print_summary(summary)
    return 0


def _print_loader(result: dict, launch) -> None:
    rate = result["samples_per_s"]
    _say(launch,
         f"data loader: {f'{rate:.1f}' if rate else '-'} samples/s ({result['samples']} samples in "
         f"{result['seconds']:.2f} s over {result['processes']} process(es), batches of {result['local_batch_size']} "
         f"per process, after {result['first_batch_s']:.2f} s to the first batch; data.num_workers="
         f"{result['num_workers']} per process, pinned memory {'on' if result['pin_memory'] else 'off'}, copied to "
         f"{result['device']})", sys.stdout)


def _print_summary(summary: dict) -> None:
    epochs: List[dict] = summary["epochs"]
    first, last = epochs[0], epochs[-1]
    rate = summary["steps_per_s"]
    print(
        f"trained {summary['global_step']} steps ({summary['epochs_done']} epochs, {summary['train_time_s']:.1f} s"
        + (f", {rate:.2f} steps/s, {summary['samples_per_s']:.1f} samples/s" if rate else "")
        + f") on {summary['device']}" + (f" x {summary['world_size']} processes" if summary["world_size"] > 1 else "")
        + f" [{summary['precision']}, SIGReg {'fused' if summary['sigreg']['fused'] else 'reference'}"
        f" ({summary['sigreg']['backend']})]"
    )
    print(
        f"loss: epoch {first['epoch']} {first['loss']:.4f} (pred {first['pred_loss']:.4f}, sigreg {first['sigreg_loss']:.3f})"
        f" -> epoch {last['epoch']} {last['loss']:.4f} (pred {last['pred_loss']:.4f}, sigreg {last['sigreg_loss']:.3f})"
    )
    if "val_pred_loss" in last:
        print(f"held-out prediction MSE ({summary['val_sequences']} sequences): epoch {first['epoch']} "
              f"{first['val_pred_loss']:.4f} -> epoch {last['epoch']} {last['val_pred_loss']:.4f}")
    run = summary["run_dir"]
    print(f"checkpoint: {summary['checkpoint']}\nlog: {run}/train_log.json   plot: {run}/loss_curves.png")


if __name__ == "__main__":
    sys.exit(main())
