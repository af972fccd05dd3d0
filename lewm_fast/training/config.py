"""Training configuration: the ``train`` config validated with clear messages, resume's saved settings, and the
model config (stable-worldmodel form) a training config describes. Composition and checked values live in
``lewm_fast.config``.

Configs live in ``lewm_fast/configs``: ``train.yaml`` (primary) with the groups ``model`` (architecture: cpu_small,
paper), ``data`` (env datasets), ``optim`` (adamw) and ``preset`` (cpu, paper: batch size, epochs, model choice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from omegaconf import DictConfig, OmegaConf

from ..backends import BACKENDS
from ..config import (
    DEVICES, compose_config, config_keys, has_key, is_number, require_bool, require_choice, require_int, require_key,
    require_number,
)
from ..data.nan_actions import NAN_ACTION_POLICIES
from ..io import default_config, latest_checkpoint, load_trainer_state

PRECISIONS = ("auto", "fp32", "bf16")
DRY_RUNS = (None, "loader")
# model-group keys forwarded to default_config's ViT overrides when set (null = keep the encoder_size's value)
ENCODER_OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def compose_train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The training config with ``overrides``, validated (raises ValueError naming the bad key)."""
    cfg = compose_config("train", overrides)
    validate_train_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------- validation
def validate_model_config(cfg: DictConfig) -> None:
    """Checks on the ``model`` group: positive sizes, patch grid, head splits."""
    for key in ("image_size", "patch_size", "latent_dim", "history_size", "depth", "heads", "dim_head", "mlp_dim",
                "proj_hidden_dim"):
        require_int(cfg, f"model.{key}")
    for key in ENCODER_OVERRIDES:
        if require_key(cfg, f"model.{key}") is not None:
            require_int(cfg, f"model.{key}")
    require_number(cfg, "model.dropout", 0.0, 1.0)
    m = cfg.model
    if m.image_size % m.patch_size:
        raise ValueError(f"model.image_size ({m.image_size}) must be a multiple of model.patch_size ({m.patch_size})")
    if m.hidden_size is not None and m.num_attention_heads is not None and m.hidden_size % m.num_attention_heads:
        raise ValueError(
            f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads ({m.num_attention_heads})"
        )
    from ..reference.vit import VIT_SIZES

    if m.encoder_size not in VIT_SIZES:
        raise ValueError(f"model.encoder_size must be one of {sorted(VIT_SIZES)}, got {m.encoder_size!r}")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ValueError with the offending key and the expected values for any bad training setting."""
    validate_model_config(cfg)
    require_int(cfg, "batch_size", 2)  # BatchNorm and SIGReg need at least 2 samples
    require_int(cfg, "epochs")
    require_int(cfg, "seed", 0)
    require_int(cfg, "log_every")
    require_int(cfg, "save_every_steps", 0)
    require_int(cfg, "keep_checkpoints", 0)
    require_bool(cfg, "resume")
    require_bool(cfg, "compile")
    if require_key(cfg, "dry_run") not in DRY_RUNS:
        raise ValueError(f"dry_run must be null (train) or loader (time the data loader), got {cfg.dry_run!r}")
    require_int(cfg, "dry_run_batches")
    require_number(cfg, "dry_run_seconds", 0.0, open_low=True)
    require_choice(cfg, "device", DEVICES)
    require_choice(cfg, "precision", PRECISIONS)
    require_number(cfg, "optim.lr", 0.0, open_low=True)
    require_number(cfg, "optim.weight_decay", 0.0)
    require_number(cfg, "optim.warmup_fraction", 0.0, 1.0)
    require_number(cfg, "optim.min_lr_ratio", 0.0, 1.0)
    require_number(cfg, "optim.eps", 0.0, open_low=True)
    betas = require_key(cfg, "optim.betas")
    if len(betas) != 2 or not all(is_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(betas)!r}")
    if require_key(cfg, "optim.grad_clip") is not None:
        require_number(cfg, "optim.grad_clip", 0.0, open_low=True)
    require_bool(cfg, "sigreg.fused")
    require_number(cfg, "sigreg.weight", 0.0)
    require_int(cfg, "sigreg.knots", 2)
    require_int(cfg, "sigreg.num_proj")
    require_choice(cfg, "sigreg.backend", BACKENDS)
    require_int(cfg, "data.frameskip")
    require_choice(cfg, "data.nan_actions", NAN_ACTION_POLICIES)
    require_int(cfg, "data.num_workers", 0)
    value = require_key(cfg, "data.val_fraction")
    if not is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"data.val_fraction must be a number >= 0 and < 1, got {value!r}")
    frames = require_int(cfg, "data.num_frames", 2)
    if frames > cfg.model.history_size + 1:
        raise ValueError(
            f"data.num_frames ({frames}) must be <= model.history_size + 1 ({cfg.model.history_size + 1}): the predictor "
            "sees num_frames - 1 context frames"
        )
    if not isinstance(require_key(cfg, "data.env"), str):
        raise ValueError(f"data.env must be an environment name, got {cfg.data.env!r}")
    if cfg.resume and cfg.out is None:
        raise ValueError("resume=true needs out=<run dir> naming the run to continue")


def check_data_path(cfg: DictConfig) -> Path:
    """The dataset file, or a ValueError saying how to create it."""
    path = require_key(cfg, "data.path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"data.path must be the path of an HDF5 dataset, got {path!r}")
    if not Path(path).is_file():
        raise ValueError(
            f"data.path={path} does not exist; collect a dataset first, e.g. "
            f"`lewm-collect env={cfg.data.env} episodes=20 out={path}`"
        )
    return Path(path)


def model_config(cfg: DictConfig, action_dim: int) -> Dict[str, Any]:
    """stable-worldmodel model config for ``cfg.model`` and an env with ``action_dim`` (per env step)."""
    m = cfg.model
    encoder = {k: int(m[k]) for k in ENCODER_OVERRIDES if m[k] is not None}
    return default_config(
        action_dim=action_dim,
        frameskip=int(cfg.data.frameskip),
        image_size=int(m.image_size),
        patch_size=int(m.patch_size),
        encoder_size=str(m.encoder_size),
        latent_dim=int(m.latent_dim),
        history_size=int(m.history_size),
        depth=int(m.depth),
        heads=int(m.heads),
        dim_head=int(m.dim_head),
        mlp_dim=int(m.mlp_dim),
        proj_hidden_dim=int(m.proj_hidden_dim),
        dropout=float(m.dropout),
        **encoder,
    )


# ---------------------------------------------------------------------------------------------------- resume
SAFE_ON_RESUME = ("epochs", "log_every", "save_every_steps", "keep_checkpoints", "device", "compile", "data.path",
                  "data.num_workers", "data.nan_actions", "dry_run", "dry_run_batches", "dry_run_seconds", "resume",
                  "out")
"""Keys a resumed run may change: more epochs (the cosine decay then stretches over the new total), logging and
checkpoint cadence, the device, compilation, where the dataset file lives (its sequence count and env are checked),
loader workers, whether NaN actions refuse the file, and a loader dry run. Every other key keeps the run's saved
value; changing one is refused. (The number of processes is not a key: a run may resume on any.)"""
_NOT_SETTINGS = ("dry_run", "dry_run_batches", "dry_run_seconds", "resume", "out")  # left out of the refusal's list


LEGACY_VALUES = {"data.val_fraction": 0.0}
"""For runs saved before a key existed: the value that reproduces what they did (no held-out split)."""


def touched_keys(config_name: str, overrides: Sequence[str]) -> List[str]:
    """The leaf keys a command line sets: ``key=value`` keys, and every key whose value a group choice
    (``model=paper``, ``preset=paper``, ...) changes."""
    full = compose_config(config_name, overrides)
    leaves = {k for k in config_keys(full) if not OmegaConf.is_dict(OmegaConf.select(full, k))}
    touched = set()
    for i, override in enumerate(overrides):
        key = override.split("=", 1)[0].lstrip("+~")
        if key in leaves:
            touched.add(key)
            continue
        without = compose_config(config_name, [*overrides[:i], *overrides[i + 1:]])  # a config group choice
        touched |= {leaf for leaf in leaves if _plain(OmegaConf.select(full, leaf)) != _plain(OmegaConf.select(without, leaf))}
    return sorted(touched)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def resume_config(overrides: Sequence[str]) -> DictConfig:
    """The config of ``lewm-train ... resume=true``: the run's saved config (from its latest checkpoint, else its
    ``train_config.yaml``), with the command line's changes to ``SAFE_ON_RESUME`` keys applied. Any other key the
    command line sets to a new value is refused (ValueError naming each key with its old and new value). A run
    without a saved config starts from the command line's config."""
    cli = compose_config("train", overrides)
    if cli.out is None:
        raise ValueError("resume=true needs out=<run dir> naming the run to continue")
    run = Path(cli.out)
    latest = latest_checkpoint(run)
    if latest is not None:
        saved, source = OmegaConf.create(load_trainer_state(latest)["config"]), f"{latest}"
    elif (run / "train_config.yaml").is_file():
        saved, source = OmegaConf.load(run / "train_config.yaml"), f"{run / 'train_config.yaml'}"
    else:
        return cli
    merged = OmegaConf.merge(compose_config("train"), saved)  # keys newer than the run get their defaults ...
    for key, value in LEGACY_VALUES.items():  # ... or, where a default would change the run, what it did before
        if not has_key(saved, key):
            OmegaConf.update(merged, key, value, merge=False)
    refused = []
    for key in touched_keys("train", overrides):
        old, new = _plain(OmegaConf.select(merged, key)), _plain(OmegaConf.select(cli, key))
        if old == new:
            continue
        if key in SAFE_ON_RESUME:
            OmegaConf.update(merged, key, OmegaConf.select(cli, key), merge=False)
        else:
            refused.append(f"{key} {old!r} -> {new!r}")
    if refused:
        raise ValueError(
            f"cannot resume {run} with changed settings ({'; '.join(refused)}): the run was trained with the values "
            f"saved in {source}; only {', '.join(k for k in SAFE_ON_RESUME if k not in _NOT_SETTINGS)} may change "
            "on resume (start a new run with another out=<dir> to change the rest)"
        )
    merged.resume, merged.out = True, cli.out
    return merged
