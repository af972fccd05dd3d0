"""``lewm-train``: train LeWM from pixels (SPEC §2) on a dataset written by ``lewm-collect``.

Hydra-style command line: ``key=value`` overrides of ``lewm_fast/configs/train.yaml`` and its groups, plus the literal
flags ``--fused-sigreg`` (= ``sigreg.fused=true``), ``--cfg`` (print the composed config) and ``--help``.
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
    "run with its saved settings; only epochs, log_every, save_every_steps, keep_checkpoints, device, data.path and\n"
    "data.num_workers may change on resume.\n"
    "preset=cpu (default) trains the small 64 px model on CPU in minutes; preset=paper is the paper recipe for a GPU."
)
EXAMPLES = (
    "lewm-train --fused-sigreg data.path=data/two_room.h5 out=runs/quickstart",
    "lewm-train preset=paper data=pusht data.path=data/pusht.h5 out=runs/pusht   # GPU: paper model, batch 128, bf16",
    "lewm-train out=runs/quickstart resume=true                                  # continue a killed run",
    "lewm-train out=runs/quickstart resume=true epochs=8                         # extend a finished run",
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lewm_fast.training.config import (
        compose_config, format_help, one_line, parse_cli, resume_config, validate_train_config,
    )

    try:
        overrides, wants_help, wants_cfg = parse_cli(argv, FLAGS)
        if wants_help:
            print(format_help(PROG, DESCRIPTION, "train", GROUPS, FLAGS, EXAMPLES))
            return 0
        cfg = compose_config("train", overrides)
        if cfg.resume:  # the run's saved settings, with the few a resume may change
            cfg = resume_config(overrides)
        if wants_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        validate_train_config(cfg)
        from lewm_fast.training.trainer import Trainer

        trainer = Trainer(cfg)
        trainer.prepare()
    except (ValueError, OSError, HydraException, OmegaConfBaseException) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    from lewm_fast.data.h5format import EpisodeReadError
    from lewm_fast.training.checkpointing import latest_checkpoint

    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; continue from the last checkpoint with: {PROG} out={trainer.run_dir} resume=true",
              file=sys.stderr)
        return 130
    except (EpisodeReadError, FloatingPointError) as exc:  # damaged data, a diverged loss: not a bug of lewm_fast
        print(f"{PROG}: error: {one_line(str(exc))} (last checkpoint: {latest_checkpoint(trainer.run_dir)})",
              file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    epochs: List[dict] = summary["epochs"]
    first, last = epochs[0], epochs[-1]
    rate = summary["steps_per_s"]
    print(
        f"trained {summary['global_step']} steps ({summary['epochs_done']} epochs, {summary['train_time_s']:.1f} s"
        + (f", {rate:.2f} steps/s" if rate else "")
        + f") on {summary['device']} [{summary['precision']}, SIGReg {'fused' if summary['sigreg']['fused'] else 'reference'}"
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
