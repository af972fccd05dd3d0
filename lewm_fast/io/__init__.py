"""Model files and runs: building a LeWM from its config, stable-worldmodel folders and object checkpoints,
lewm-train's run directories, and ``load_model``, the one loader for all of them."""

from .build import (
    TINY_CONFIG, CheckpointError, build_model, default_config, instantiate, load_state_dict_strict, read_weights,
)
from .load import RunInfo, load_model
from .object_file import load_object_checkpoint
from .runs import (
    CHECKPOINT_DIR, NORMALIZATION, TRAINER_STATE, checkpoint_name, latest_checkpoint, list_checkpoints,
    load_trainer_state, model_files, read_normalization, remove_partial_checkpoints, resolve_checkpoint,
    resolve_model_folder, save_checkpoint,
)
from .swm_folder import CONFIG_NAME, WEIGHTS_NAME, load_pretrained, save_pretrained

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_NAME", "CheckpointError", "NORMALIZATION", "RunInfo", "TINY_CONFIG", "TRAINER_STATE",
    "WEIGHTS_NAME", "build_model", "checkpoint_name", "default_config", "instantiate", "latest_checkpoint",
    "list_checkpoints", "load_model", "load_object_checkpoint", "load_pretrained", "load_state_dict_strict",
    "load_trainer_state", "model_files", "read_normalization", "read_weights", "remove_partial_checkpoints",
    "resolve_checkpoint", "resolve_model_folder", "save_checkpoint", "save_pretrained",
]
