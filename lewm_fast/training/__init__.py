"""Training LeWM from pixels (``lewm-train``): config composition/validation, the loop, checkpoints and resume."""

from .checkpointing import latest_checkpoint, list_checkpoints, read_normalization, resolve_model_folder
from .config import compose_train_config, model_config, validate_train_config
from .trainer import (
    Trainer, build_scheduler, build_sigreg, epoch_batches, open_datasets, split_episodes, train, warmup_cosine,
)

__all__ = [
    "Trainer", "build_scheduler", "build_sigreg", "compose_train_config", "epoch_batches", "latest_checkpoint",
    "list_checkpoints", "model_config", "open_datasets", "read_normalization", "resolve_model_folder", "split_episodes",
    "train", "validate_train_config", "warmup_cosine",
]
