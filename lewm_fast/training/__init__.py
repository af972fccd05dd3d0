"""Training LeWM from pixels (``lewm-train``): config composition/validation, the loop and resume (checkpoint
files and run directories: ``lewm_fast.io``)."""

from ..data import split_episodes
from .config import compose_train_config, model_config, validate_train_config
from .trainer import Trainer, build_scheduler, build_sigreg, epoch_batches, open_datasets, train, warmup_cosine

__all__ = [
    "Trainer", "build_scheduler", "build_sigreg", "compose_train_config", "epoch_batches", "model_config",
    "open_datasets", "split_episodes", "train", "validate_train_config", "warmup_cosine",
]
