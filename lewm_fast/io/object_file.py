"""Object checkpoints (``<run>_object.ckpt``): a LeWM pickled whole by ``torch.save(model, path)``, as stable-worldmodel's
and le-wm's training callbacks write it, loaded without their libraries and without running code from the file.

``torch.load`` reads the file with a restricted unpickler whose ``find_class`` resolves only an allowlist of
(module, name) pairs. The classes of the model tree (stable-worldmodel / le-wm LeWM modules, transformers' ViT and
ViTConfig, torch.nn layers) become inert records that keep the pickled attributes and are never imported, called or
given their own ``__setstate__``; the only real objects handed out are torch's tensor rebuild helpers and a few plain
types. Anything else is refused before it runs. The records' parameters and buffers form the state dict (with the
keys ``state_dict()`` would give), the LeWM configuration is read off recorded attributes (ViTConfig fields, the
attention's ``heads``) and tensor shapes, and a lewm_fast ``LeWM`` built from it loads that state dict strictly.
"""

from __future__ import annotations

import _compat_pickle  # the Python 2 names protocol-2 pickles use (__builtin__, commands, ...)
import collections
import functools
import os
import pickle
import warnings
from typing import Any

import torch
from torch import nn
from typing_extensions import Self

from ..reference.lewm import LeWM
from ..reference.modules import MLP, Embedder, Predictor
from ..reference.vit import VIT_SIZES, vit_hf
from .build import _SAVE_TARGETS, CheckpointError, build_model, load_state_dict_strict

# where LeWM's module classes live: stable-worldmodel's package (lewm/lewm.py + lewm/module.py, earlier
# lewm/module_lewm.py, earliest one lewm.py file), its SIGReg, and the le-wm repo's top-level scripts jepa.py + module.py
_LEWM_MODULES = (
    "stable_worldmodel.wm.lewm",
    "stable_worldmodel.wm.lewm.lewm",
    "stable_worldmodel.wm.lewm.module",
    "stable_worldmodel.wm.lewm.module_lewm",
    "stable_worldmodel.sigreg",
    "jepa",
    "module",
)
_LEWM_CLASSES = (
    "LeWM", "JEPA", "Predictor", "ARPredictor", "Transformer", "ConditionalBlock", "Attention", "FeedForward",
    "Embedder", "MLP", "SIGReg",
)
_LEWM_ROOTS = ("LeWM", "JEPA")
# transformers' ViTModel in its 4.x (ViTEncoder ... ViTOutput, ViTSdpaSelfAttention) and 5.x (ViTMLP) module trees
_VIT_CLASSES = (
    "ViTModel", "ViTEmbeddings", "ViTPatchEmbeddings", "ViTEncoder", "ViTLayer", "ViTAttention", "ViTSelfAttention",
    "ViTSdpaSelfAttention", "ViTSelfOutput", "ViTIntermediate", "ViTOutput", "ViTMLP", "ViTPooler",
)
_TORCH_LAYERS = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm,
    nn.BatchNorm1d, nn.Dropout, nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Softmax,
)
# stable-pretraining's LightningModule, saved whole by some callbacks (``torch.save(pl_module)``); the LeWM is its ``model``
_WRAPPERS = ("stable_pretraining.module.Module",)
_RECORDED = frozenset(
    [f"{module}.{name}" for module in _LEWM_MODULES for name in _LEWM_CLASSES]
    + [f"transformers.models.vit.modeling_vit.{name}" for name in _VIT_CLASSES]
    + [f"{layer.__module__}.{layer.__qualname__}" for layer in _TORCH_LAYERS]
    + list(_WRAPPERS)
    + [
        "transformers.models.vit.configuration_vit.ViTConfig",
        "transformers.activations.GELUActivation",
        "torch._C._nn.gelu",  # GELUActivation's function (a reference, never called)
        "torch.nn.functional.gelu",
        "builtins.getattr",  # how a bound method pickles (the wrapper's forward): recorded, never called
    ]
)
# Lightning's hyper-parameter dict (a dict subclass in the wrapper): kept as a plain dict
_DICTS = frozenset(
    {
        "lightning.fabric.utilities.data.AttributeDict",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
    }
)
# the norm and activation layers lewm_fast's MLP can be given (as ``torch.nn.<Name>`` partials)
_MLP_LAYERS = frozenset(f"{layer.__module__}.{layer.__qualname__}" for layer in (nn.BatchNorm1d, nn.LayerNorm, nn.Identity, nn.GELU, nn.SiLU, nn.ReLU))
_DTYPES = ("float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")


def _rebuild_parameter_without_state(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, state: Any) -> nn.Parameter:
    """``torch._utils._rebuild_parameter_with_state`` minus the ``setattr`` of pickled attributes onto the parameter."""
    return torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)


# the only real objects the unpickler hands out: inert types and torch's tensor rebuild helpers
_REAL: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_without_state,
    "torch.device": torch.device,
    "torch.Size": torch.Size,
    "torch.UntypedStorage": torch.UntypedStorage,
    **{f"torch.{name}": getattr(torch, name) for name in _DTYPES},
}


class _Record:
    """Inert stand-in for one pickled object of an allowlisted class: its class name, arguments and attributes."""

    origin = ""

    def __new__(cls, *args: Any) -> Self:
        record = super().__new__(cls)
        record.args, record.state = args, {}
        return record

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def kind(self) -> str:
        """The class name without its module (``Linear``, ``ViTConfig``, ...)."""
        return self.origin.rpartition(".")[2]


class _RecordedDict(dict):
    """A pickled dict subclass (Lightning's ``AttributeDict``), kept as a dict."""


@functools.cache
def _record_class(origin: str) -> type:
    return type(origin.rpartition(".")[2], (_Record,), {"origin": origin, "__module__": __name__})


def _resolve(module: str, name: str) -> Any:
    """``find_class`` of the restricted unpickler: an allowlisted (module, name) or ``CheckpointError``."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
    qualname = f"{module}.{name}"
    if qualname in _REAL:
        return _REAL[qualname]
    if qualname in _RECORDED:
        return _record_class(qualname)
    if qualname in _DICTS:
        return _RecordedDict
    raise CheckpointError(
        f"the object checkpoint refers to {qualname}, which is not a known LeWM class: object checkpoints are loaded "
        f"without running code from the file, so if this class is legitimate, export the model with stable-worldmodel "
        f"as config.json + weights.pt and load that folder"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)


class _RestrictedPickle:
    """The ``pickle_module`` handed to ``torch.load``: every unpickling it does (legacy-format headers included) is restricted."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def read_object(path: str | os.PathLike) -> Any:
    """Unpickle an object checkpoint (torch zip or legacy format) into records; no code from the file runs."""
    try:
        with warnings.catch_warnings():  # the legacy format looks for the source of each (here: record) class
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code for container")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except CheckpointError:
        raise
    except Exception as exc:  # a malformed pickle can fail in any way; each is an unreadable file
        raise CheckpointError(f"cannot read {path}: it is corrupt or not a torch file ({str(exc).splitlines()[0]})") from exc


def _find_lewm(root: Any, path: str | os.PathLike) -> _Record:
    """The pickled LeWM: the file's root object, or the ``model`` of a training wrapper."""
    if isinstance(root, _Record) and root.origin in _WRAPPERS:
        root = _table(root, "_modules").get("model")
    if isinstance(root, _Record) and root.kind in _LEWM_ROOTS:
        return root
    if isinstance(root, dict):
        raise CheckpointError(
            f"{path} holds a dict (a state dict or training checkpoint), not a pickled model: load a folder with its "
            f"weights.pt and config.json instead"
        )
    raise CheckpointError(f"{path} holds a {getattr(root, 'origin', type(root).__name__)}, not a pickled LeWM or JEPA")


def _table(record: _Record, name: str) -> dict[str, Any]:
    """One of a pickled module's name tables (``_modules``, ``_parameters``, ``_buffers``); empty if absent."""
    table = record.state.get(name)
    return table if isinstance(table, dict) else {}


def _submodule(record: _Record, name: str) -> _Record:
    child = _table(record, "_modules").get(name)
    if not isinstance(child, _Record):
        raise CheckpointError(f"the object checkpoint's {record.kind} has no {name!r} submodule")
    return child


def _submodules(record: _Record) -> dict[str, _Record]:
    return {name: child for name, child in _table(record, "_modules").items() if child is not None}


def _weight(record: _Record) -> torch.Tensor:
    weight = _table(record, "_parameters").get("weight")
    if not isinstance(weight, torch.Tensor):
        raise CheckpointError(f"the object checkpoint's {record.kind} has no weight tensor")
    return weight


def _number(record: _Record, name: str) -> int | float:
    value = record.state.get(name)
    if not isinstance(value, (int, float)):
        raise CheckpointError(f"the object checkpoint's {record.kind} has no numeric attribute {name!r}")
    return value


def collect_state_dict(record: _Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a record tree, under the keys ``nn.Module.state_dict`` would give."""
    skip = record.state.get("_non_persistent_buffers_set") or set()
    buffers = {name: tensor for name, tensor in _table(record, "_buffers").items() if name not in skip}
    tensors = {**_table(record, "_parameters"), **buffers}
    out = {prefix + name: tensor for name, tensor in tensors.items() if tensor is not None}
    for name, child in _submodules(record).items():
        if not isinstance(child, _Record):
            raise CheckpointError(f"the object checkpoint's {record.kind} has a submodule {name!r} that is not a module")
        out.update(collect_state_dict(child, f"{prefix}{name}."))
    if not all(isinstance(t, torch.Tensor) for t in out.values()):
        raise CheckpointError(f"the object checkpoint's {record.kind} holds a parameter or buffer that is not a tensor")
    return out


def _encoder_config(encoder: _Record) -> dict[str, Any]:
    """``vit_hf`` arguments from the pickled ViTModel's ViTConfig."""
    config = encoder.state.get("config")
    if not isinstance(config, _Record) or config.kind != "ViTConfig":
        raise CheckpointError(f"the object checkpoint's encoder is a {encoder.kind}, not a transformers ViTModel with a ViTConfig")
    if config.state.get("hidden_act") != "gelu":
        raise CheckpointError(f"the object checkpoint's ViT uses hidden_act={config.state.get('hidden_act')!r}; lewm_fast's ViT implements 'gelu'")
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size", "image_size",
              "num_channels", "layer_norm_eps")
    vit = {name: _number(config, name) for name in fields}
    dims = tuple(vit[name] for name in fields[:4])
    size = next((name for name, sizes in VIT_SIZES.items() if sizes == dims), "tiny")
    return {"_target_": _SAVE_TARGETS[vit_hf], "size": size, "pretrained": False, "use_mask_token": False, **vit}


def _predictor_config(predictor: _Record) -> dict[str, Any]:
    """Predictor sizes: frames and width from ``pos_embedding``, heads from the attention, the rest from weights."""
    pos = _table(predictor, "_parameters").get("pos_embedding")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 3:
        raise CheckpointError("the object checkpoint's predictor has no (1, frames, dim) pos_embedding")
    transformer = _submodule(predictor, "transformer")
    blocks = list(_submodules(_submodule(transformer, "layers")).values())
    if not blocks:
        raise CheckpointError("the object checkpoint's predictor has no transformer blocks")
    attn = _submodule(blocks[0], "attn")
    heads = _number(attn, "heads")
    output_proj = _submodules(transformer).get("output_proj")
    hidden_dim = _weight(_submodule(transformer, "norm")).shape[0]
    return {
        "_target_": _SAVE_TARGETS[Predictor],
        "num_frames": pos.shape[1],
        "input_dim": pos.shape[2],
        "hidden_dim": hidden_dim,
        "output_dim": _weight(output_proj).shape[0] if output_proj is not None and output_proj.kind == "Linear" else hidden_dim,
        "depth": len(blocks),
        "heads": heads,
        "dim_head": _weight(_submodule(attn, "to_qkv")).shape[0] // (3 * heads),
        "mlp_dim": _weight(_submodule(_submodule(_submodule(blocks[0], "mlp"), "net"), "1")).shape[0],
        "dropout": _number(attn, "dropout"),
        "emb_dropout": _number(_submodule(predictor, "dropout"), "p"),
    }


def _embedder_config(embedder: _Record) -> dict[str, Any]:
    """Action encoder sizes from its Conv1d and first/last Linear weights."""
    conv = _weight(_submodule(embedder, "patch_embed"))  # (smoothed, input, 1)
    embed = _submodule(embedder, "embed")
    hidden, last = _weight(_submodule(embed, "0")), _weight(_submodule(embed, "2"))
    return {
        "_target_": _SAVE_TARGETS[Embedder],
        "input_dim": conv.shape[1],
        "smoothed_dim": conv.shape[0],
        "emb_dim": last.shape[0],
        "mlp_scale": hidden.shape[0] // last.shape[0],
    }


def _layer_factory(layer: _Record) -> dict[str, Any]:
    """A torch.nn norm/activation layer as the ``_partial_`` config entry MLP's ``norm_fn`` / ``act_fn`` take."""
    if layer.origin not in _MLP_LAYERS:
        raise CheckpointError(f"the object checkpoint's MLP uses a {layer.kind} layer, which lewm_fast's MLP does not build")
    return {"_target_": f"torch.nn.{layer.kind}", "_partial_": True}


def _mlp_config(mlp: _Record) -> dict[str, Any] | None:
    """Projector / pred_proj: ``None`` for an Identity, else MLP sizes and its norm and activation layers."""
    if mlp.kind == "Identity":
        return None
    first, norm, act, last = (_submodule(_submodule(mlp, "net"), str(i)) for i in range(4))
    return {
        "_target_": _SAVE_TARGETS[MLP],
        "input_dim": _weight(first).shape[1],
        "hidden_dim": _weight(first).shape[0],
        "output_dim": _weight(last).shape[0],
        "norm_fn": _layer_factory(norm),
        "act_fn": _layer_factory(act),
    }


def infer_config(lewm: _Record) -> dict[str, Any]:
    """The stable-worldmodel-style config (``_target_`` entries) of a pickled LeWM, read off its records."""
    return {
        "_target_": _SAVE_TARGETS[LeWM],
        "encoder": _encoder_config(_submodule(lewm, "encoder")),
        "predictor": _predictor_config(_submodule(lewm, "predictor")),
        "action_encoder": _embedder_config(_submodule(lewm, "action_encoder")),
        "projector": _mlp_config(_submodule(lewm, "projector")),
        "pred_proj": _mlp_config(_submodule(lewm, "pred_proj")),
    }


def load_object_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LeWM:
    """Load ``<run>_object.ckpt`` into a lewm_fast LeWM (config inferred, weights loaded strictly), in eval mode."""
    lewm = _find_lewm(read_object(path), path)
    state_dict = collect_state_dict(lewm)  # first: it checks that the tree holds only modules and tensors
    model = build_model(infer_config(lewm))
    load_state_dict_strict(model, state_dict)
    return model.to(map_location).eval()
