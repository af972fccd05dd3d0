"""Building a LeWM from a stable-worldmodel config and loading weights into it strictly.

Maps stable-worldmodel's hydra ``_target_`` names onto lewm_fast classes (so its configs build without it installed),
gives the paper's config (``default_config``), reads ``weights.pt`` state dicts and loads them strictly: a mismatch
raises ``CheckpointError`` naming the missing and unexpected keys and the wrong shapes.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
from typing import Any, Callable, Dict, Union

import torch
from torch import nn

from ..reference.lewm import LeWM
from ..reference.modules import Embedder, MLP, Predictor
from ..reference.vit import VIT_SIZES, convert_vit_keys, vit_hf


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model its config describes."""


# last component of a _target_ -> constructor; the module part must be one of _KNOWN_MODULE_PREFIXES
_CONSTRUCTORS: Dict[str, Callable[..., Any]] = {
    "LeWM": LeWM,
    "JEPA": LeWM,
    "Predictor": Predictor,
    "ARPredictor": Predictor,
    "Embedder": Embedder,
    "MLP": MLP,
    "vit_hf": vit_hf,
    "BatchNorm1d": nn.BatchNorm1d,
    "LayerNorm": nn.LayerNorm,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "ReLU": nn.ReLU,
    "Identity": nn.Identity,
}
_KNOWN_MODULE_PREFIXES = ("stable_worldmodel", "stable_pretraining", "torch.nn", "lewm_fast", "module", "jepa")

# what save_pretrained writes, so that stable-worldmodel itself can load lewm_fast checkpoints
_SAVE_TARGETS = {
    LeWM: "stable_worldmodel.wm.lewm.LeWM",
    Predictor: "stable_worldmodel.wm.lewm.module.Predictor",
    Embedder: "stable_worldmodel.wm.lewm.module.Embedder",
    MLP: "stable_worldmodel.wm.lewm.module.MLP",
    vit_hf: "stable_pretraining.backbone.utils.vit_hf",
}


def _resolve_target(target: str) -> Callable[..., Any]:
    module, _, name = target.rpartition(".")
    if name not in _CONSTRUCTORS or not module.startswith(_KNOWN_MODULE_PREFIXES):
        raise CheckpointError(
            f"config.json names _target_ {target!r}, which lewm_fast cannot build; known: "
            f"{sorted(_CONSTRUCTORS)} under {_KNOWN_MODULE_PREFIXES}"
        )
    return _CONSTRUCTORS[name]


def instantiate(node: Any) -> Any:
    """Minimal hydra ``instantiate`` for the LeWM config tree (``_target_``, ``_partial_``, nested dicts/lists)."""
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return {k: instantiate(v) for k, v in node.items()}
    fn = _resolve_target(node["_target_"])
    kwargs = {k: instantiate(v) for k, v in node.items() if k not in ("_target_", "_partial_", "_recursive_", "_convert_")}
    if node.get("_partial_", False):
        return functools.partial(fn, **kwargs)
    try:
        return fn(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"cannot build {node['_target_']} from config arguments {sorted(kwargs)}: {exc}") from exc


TINY_CONFIG = dict(
    action_dim=2, frameskip=5, image_size=28, patch_size=14, latent_dim=32, history_size=3, depth=2, heads=4,
    dim_head=8, mlp_dim=64, proj_hidden_dim=48, dropout=0.1, num_hidden_layers=2, hidden_size=32,
    num_attention_heads=2, intermediate_size=64,
)
"""``default_config`` arguments of the test suite's tiny LeWM (fast on CPU; its kernel launches are compile-checked)."""


def default_config(
    action_dim: int = 2,
    frameskip: int = 5,
    image_size: int = 224,
    patch_size: int = 14,
    encoder_size: str = "tiny",
    latent_dim: int = 192,
    history_size: int = 3,
    depth: int = 6,
    heads: int = 16,
    dim_head: int = 64,
    mlp_dim: int = 2048,
    proj_hidden_dim: int = 2048,
    dropout: float = 0.1,
    **encoder_overrides: Any,
) -> Dict[str, Any]:
    """The paper's LeWM config in stable-worldmodel form; ``action_dim`` is the env's, the model sees frameskip x it.

    ``encoder_overrides`` (e.g. ``num_hidden_layers=2``) shrink the ViT for tests; ``latent_dim`` must equal the ViT width
    unless the projector maps between them.
    """
    bn = {"_target_": "torch.nn.BatchNorm1d", "_partial_": True}
    mlp = lambda i, o: {  # noqa: E731
        "_target_": _SAVE_TARGETS[MLP], "input_dim": i, "output_dim": o, "hidden_dim": proj_hidden_dim, "norm_fn": bn
    }
    vit_width = encoder_overrides.get("hidden_size", VIT_SIZES[encoder_size][0] if encoder_size in VIT_SIZES else latent_dim)
    return {
        "_target_": _SAVE_TARGETS[LeWM],
        "encoder": {
            "_target_": _SAVE_TARGETS[vit_hf],
            "size": encoder_size,
            "patch_size": patch_size,
            "image_size": image_size,
            "pretrained": False,
            "use_mask_token": False,
            **encoder_overrides,
        },
        "predictor": {
            "_target_": _SAVE_TARGETS[Predictor],
            "num_frames": history_size,
            "input_dim": latent_dim,
            "hidden_dim": latent_dim,
            "output_dim": latent_dim,
            "depth": depth,
            "heads": heads,
            "mlp_dim": mlp_dim,
            "dim_head": dim_head,
            "dropout": dropout,
            "emb_dropout": 0.0,
        },
        "action_encoder": {"_target_": _SAVE_TARGETS[Embedder], "input_dim": frameskip * action_dim, "emb_dim": latent_dim},
        "projector": mlp(vit_width, latent_dim),
        "pred_proj": mlp(latent_dim, latent_dim),
    }


def build_model(config: Dict[str, Any]) -> LeWM:
    """Instantiate a LeWM (random weights) from a config dict; the dict is kept as ``model.config``."""
    if not isinstance(config, dict) or "_target_" not in config:
        raise CheckpointError("a LeWM config must be a dict with a top-level '_target_' entry")
    model = instantiate(config)
    if not isinstance(model, LeWM):
        raise CheckpointError(f"config's top-level _target_ {config['_target_']!r} did not build a LeWM")
    model.config = copy.deepcopy(config)
    return model


def _strip_compile_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


class _StubModule(nn.Module):
    """Stands in for classes of a pickled module whose library is not installed; keeps its parameters and buffers."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("stub module from a pickled checkpoint cannot run")


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _StubModule


class _LenientPickle:
    Unpickler = _LenientUnpickler
    load = pickle.load
    __name__ = "pickle"


def read_weights(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu", allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Read ``weights.pt``: a state dict, or (with ``allow_pickle=True``) a pickled module; returns a state dict."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise CheckpointError(
                f"{path} is not a plain state dict (it pickles Python objects). If you trust its origin, load it with "
                f"allow_pickle=True. ({str(exc).splitlines()[0]})"
            ) from exc
        obj = torch.load(path, map_location=map_location, weights_only=False, pickle_module=_LenientPickle)
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: it is corrupt or not a torch file ({exc})") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict (str -> Tensor), got {type(obj).__name__}")
    return _strip_compile_prefix(obj)


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load with the checks of ``strict=True``, raising ``CheckpointError`` that lists every missing/unexpected key
    and every shape mismatch (encoder keys may use either transformers layout)."""
    state_dict = convert_vit_keys(state_dict, "5.x", prefix="encoder.")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            parts.append(f"wrong shapes ({len(shapes)}): {shapes}")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
