"""``lewm-train-idm``: train a goal-conditioned inverse-dynamics model (GC-IDM) on a frozen LeWM run's latents.

Hydra-style command line: ``key=value`` overrides of ``lewm_fast/configs/train_idm.yaml``, plus ``--cfg`` and
``--help``. Writes ``<out>/idm.pt`` (default ``<run>/idm``), the cached latents ``<out>/latents.npz`` and
``<out>/train_idm.json`` (the settings and per-epoch losses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

PROG = "lewm-train-idm"
DESCRIPTION = (
    "Encode the run's training episodes once with its frozen encoder, sample hindsight pairs (frame t, goal frame\n"
    "t+k, k in [1, K] model frames, K = goal_offset / frameskip) and train an MLP to output the action block executed\n"
    "at t from (z_t, z_{t+k}, k/K). Held-out loss per epoch on the run's held-out episodes; idm.pt after every epoch\n"
    "(resumed exactly); it stores a hash of the world model's weights, and lewm-eval refuses it for another model.\n"
    "Plan with it: lewm-eval checkpoint=<run> planner=idm (or planner=idm_cem)."
)
EXAMPLES = (
    "lewm-train-idm checkpoint=runs/quickstart",
    "lewm-train-idm checkpoint=lewm_fast/assets/two_room data.path=runs/default_model/two_room.h5 out=runs/two_room_idm",
    "lewm-train-idm checkpoint=runs/pusht epochs=60 hidden=1024",
)


def _settings(cfg: Any):
    from lewm_fast.config import require_int, require_number
    from lewm_fast.training.idm import IDMTrainSettings

    for key in ("hidden", "layers", "epochs", "batch_size"):
        require_int(cfg, key)
    require_int(cfg, "goal_offset")
    require_int(cfg, "seed", 0)
    require_number(cfg, "lr", 0.0, open_low=True)
    require_number(cfg, "weight_decay", 0.0)
    require_number(cfg, "data.val_fraction", 0.0, 1.0)
    return IDMTrainSettings(int(cfg.hidden), int(cfg.layers), int(cfg.epochs), int(cfg.batch_size), float(cfg.lr),
                            float(cfg.weight_decay), int(cfg.seed))


def prepare(cfg: Any) -> dict:
    """Check the config, load the frozen model and the data: -> the pieces ``train_idm`` needs. ValueError /
    CheckpointError with a clear message for every user mistake."""
    from lewm_fast.backends import resolve_device
    from lewm_fast.config import require_bool, require_choice, DEVICES
    from lewm_fast.data import ActionCodec, split_episodes
    from lewm_fast.io import CheckpointError, load_model
    from lewm_fast.io.idm import default_idm_dir, weights_hash
    from lewm_fast.training.idm import HindsightPairs, encode_episodes, read_file_layout

    settings = _settings(cfg)
    require_choice(cfg, "device", DEVICES)
    for key in ("resume", "overwrite", "progress"):
        require_bool(cfg, key)
    device = resolve_device(str(cfg.device))
    model, run = load_model(cfg.checkpoint, device)
    model.requires_grad_(False)
    norm = run.normalization
    if norm is None:
        raise CheckpointError(f"{run.source} has no normalization.json (the run's action statistics and frameskip); "
                              "lewm-train writes it next to every checkpoint")
    frameskip, env = int(norm["frameskip"]), str(norm["env"])
    run_file = norm.get("data", {}).get("path")
    path = Path(cfg.data.path) if cfg.data.path is not None else (Path(run_file) if run_file else None)
    if path is None:
        raise ValueError(f"{run.source}'s normalization.json names no training file: pass data.path=<file.h5>")
    if not path.is_file():
        raise ValueError(f"episode file {path} does not exist" + ("" if cfg.data.path is not None else
                         " (the run's training file, from its normalization.json; pass data.path=<file.h5>)"))
    layout = read_file_layout(path)
    if layout.env is not None and layout.env != env:
        raise ValueError(f"{path} records env {layout.env!r} but {run.source} was trained on {env!r}")
    if layout.action_dim * frameskip != model.action_dim:
        raise ValueError(f"{path} has {layout.action_dim}-d actions, x frameskip {frameskip} = "
                         f"{layout.action_dim * frameskip}, but the model takes {model.action_dim}-wide action blocks: "
                         "the file belongs to another environment")
    horizon = int(cfg.goal_offset) // frameskip
    if horizon < 1:
        raise ValueError(f"goal_offset={cfg.goal_offset} is shorter than one action block (frameskip {frameskip})")
    same_file = run_file is not None and Path(run_file).resolve() == path.resolve()
    if same_file and "held_out_episodes" in norm.get("data", {}):
        heldout_ids = sorted(int(e) for e in norm["data"]["held_out_episodes"])
        train_ids = sorted(set(range(layout.num_episodes)) - set(heldout_ids))
    else:
        train_ids, heldout_ids = split_episodes(layout.num_episodes, float(cfg.data.val_fraction), int(cfg.seed))
    out = Path(cfg.out) if cfg.out is not None else default_idm_dir(run.source)
    codec = ActionCodec(norm["action"]["mean"], norm["action"]["std"], frameskip, layout.action_dim)
    progress = bool(cfg.progress)
    cache = out / "latents.npz"
    train = HindsightPairs(encode_episodes(model, path, layout, train_ids, cache, progress), codec, frameskip, horizon)
    heldout = (HindsightPairs(encode_episodes(model, path, layout, heldout_ids, out / "latents_heldout.npz", progress),
                              codec, frameskip, horizon) if heldout_ids else None)
    meta = {"env": env, "frameskip": frameskip, "env_action_dim": int(layout.action_dim), "horizon": horizon,
            "goal_offset": int(cfg.goal_offset), "data": str(path.resolve()), "checkpoint": str(run.source),
            "train_episodes": len(train_ids), "heldout_episodes": len(heldout_ids)}
    return dict(model_hash=weights_hash(model), train=train, heldout=heldout, settings=settings, out=out, meta=meta)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lewm_fast.config import compose_config, format_help, one_line, parse_cli
    from lewm_fast.data.h5format import EpisodeFileError
    from lewm_fast.io import CheckpointError

    errors = (ValueError, CheckpointError, EpisodeFileError, HydraException, OmegaConfBaseException)
    try:
        overrides, wants_help, wants_cfg = parse_cli(argv, {})
        if wants_help:
            print(format_help(PROG, DESCRIPTION, "train_idm", {}, {}, EXAMPLES))
            return 0
        cfg = compose_config("train_idm", overrides)
        if wants_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        parts = prepare(cfg)
        from lewm_fast.training.idm import train_idm

        out: Path = parts["out"]
        if cfg.overwrite and (out / "idm.pt").is_file():
            (out / "idm.pt").unlink()
        print(f"GC-IDM on {parts['meta']['env']}: {len(parts['train'])} training starts, K = {parts['meta']['horizon']} "
              f"frames, held-out {parts['meta']['heldout_episodes']} episodes -> {out}")
        meta = train_idm(parts["model_hash"], parts["train"], parts["heldout"], parts["settings"], out, parts["meta"],
                         resume=bool(cfg.resume), progress=bool(cfg.progress))
    except errors as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    (out / "train_idm.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), **meta}, indent=2))
    print(f"GC-IDM: {out / 'idm.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
