"""ONNX export of a LeWM for planning outside PyTorch (onnxruntime, onnxruntime-web).

``export_onnx(checkpoint, out)`` writes three files:

- ``encoder.onnx``: uint8 RGB frames (B, S, S, 3) -> latents (B, D); the ImageNet normalisation is inside the graph,
  then ``LeWM.encode``; B is dynamic.
- ``planner.onnx``: context latents (H, D), the action blocks between them (H-1, A), candidates (N, T, A) and the goal
  latent (D) -> costs (N, T) and latents (N, H+T, D) from ``LeWM.rollout``; ``costs[:, t]`` is the goal cost
  ``||latent after t+1 blocks - goal||^2`` of ``reference.cem.goal_mse_cost``, so ``costs[:, -1]`` is the CEM cost at
  horizon T and ``costs[:, k-1]`` the cost at a shorter horizon k (the rollout is causal: candidates padded with anything
  after block k give the same ``costs[:, k-1]``). N is dynamic; H and T are fixed at export.
- ``manifest.json``: sizes, the frame normalisation, the action scaling of ``normalization.json`` (per block entry), the
  opset, the source checkpoint's SHA-256, the env's geometry (Two-Room: its module constants), the latent PCA basis
  and ``action_bounds``: the env's action box in normalised block units (``planning.bounds.normalized_box``) with the
  mode the planner graph applies (``action_bounds=`` of the export): ``"clip"`` clamps the candidates into the box
  before the rollout (a sampler should clip its samples too, so its mean and plan stay inside), ``"penalty"`` adds
  ``weight * sum excess^2`` over blocks 1..t+1 to ``costs[:, t]``, ``"none"`` leaves the graph a pure cost function.

With a GC-IDM (``lewm-train-idm``: ``idm=`` of the export, else the run's ``idm/`` when it holds one), also
``idm.onnx``: current latents (B, D), goal latents (B, D) and ``remaining`` (B,) = k/K -> normalised action blocks
(B, A), one forward pass per decision (``reference.idm.GCIDM``); described in the manifest under ``"idm"``.

The PCA basis (first two principal components) is computed from frames of the training data (``data=``, else the file
``normalization.json`` records); a checkpoint shipped without its data carries it as ``latent_pca.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..io import CheckpointError, load_model, model_files
from ..planning.bounds import BOUND_MODES, DEFAULT_ACTION_BOUNDS, DEFAULT_PENALTY_WEIGHT, ActionBounds, normalized_box
from ..reference.cem import goal_mse_cost
from ..reference.lewm import LeWM
from ..reference.vit import IMAGENET_MEAN, IMAGENET_STD

OPSET = 17
ENCODER_FILE, PLANNER_FILE, MANIFEST_FILE, PCA_FILE = "encoder.onnx", "planner.onnx", "manifest.json", "latent_pca.json"
IDM_FILE = "idm.onnx"
FORMAT = "lewm-fast-onnx/1"
EXTRA_HINT = 'pip install "lewm-fast[onnx]"'


class ExportError(ValueError):
    """A checkpoint or an export setting that cannot be exported; the message says why, on one line."""


class EncoderGraph(nn.Module):
    """uint8 RGB frames (B, S, S, 3) -> latents (B, D): ``preprocess_frames`` then ``LeWM.encode``."""

    def __init__(self, model: LeWM):
        super().__init__()
        self.model = model
        self.register_buffer("mean", 255.0 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = (frames.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.model.encode(pixels.unsqueeze(1))[:, 0]


class PlannerGraph(nn.Module):
    """(context (H, D), action_history (H-1, A), candidates (N, T, A), goal (D)) -> (costs (N, T), latents (N, H+T, D)):
    every candidate rolled out from the same context with ``LeWM.rollout``, its goal cost after each block. With
    ``bounds`` (``ActionBounds``): clip mode clamps the candidates first; penalty mode adds the penalty of blocks
    1..t+1 to ``costs[:, t]``."""

    def __init__(self, model: LeWM, bounds: Optional[ActionBounds] = None):
        super().__init__()
        self.model = model
        self.mode = "none" if bounds is None else bounds.mode
        self.weight = 0.0 if bounds is None else bounds.weight
        if bounds is not None:
            self.register_buffer("low", bounds.low.cpu(), persistent=False)
            self.register_buffer("high", bounds.high.cpu(), persistent=False)

    def forward(self, context: torch.Tensor, action_history: torch.Tensor, candidates: torch.Tensor,
                goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = candidates.shape[0]
        if self.mode == "clip":
            candidates = torch.minimum(torch.maximum(candidates, self.low), self.high)
        ctx = context.expand(1, n, *context.shape)
        hist = action_history.expand(1, n, *action_history.shape)
        latents = self.model.rollout(ctx, hist, candidates.unsqueeze(0))[0]
        costs = goal_mse_cost(latents[:, context.shape[0]:], goal.expand(n, -1))
        if self.mode == "penalty":
            excess = torch.relu(candidates - self.high) + torch.relu(self.low - candidates)
            costs = costs + self.weight * torch.cumsum(excess.square().sum(-1), dim=1)
        return costs, latents


def require_onnx() -> None:
    """ExportError naming the extra to install when onnx (needed by torch's exporter) is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx package: {EXTRA_HINT}") from exc


def file_sha256(paths: Sequence[Union[str, os.PathLike]]) -> str:
    """SHA-256 over the bytes of ``paths``, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hash(source: Path) -> str:
    """SHA-256 of a checkpoint: its config.json + weights.pt, or the object checkpoint file."""
    return file_sha256(model_files(source))


def load_for_export(checkpoint: Union[str, os.PathLike]) -> tuple[LeWM, Path, Dict[str, Any]]:
    """-> (model in fp32 eval mode, its folder or file, its normalization.json); ExportError for what cannot be
    exported: no checkpoint there, unreadable or non-finite weights, no action statistics."""
    try:
        model, run = load_model(checkpoint)
    except (CheckpointError, OSError) as exc:
        raise ExportError(f"cannot export {checkpoint}: {exc}") from exc
    if run.normalization is None:
        raise ExportError(f"cannot export {checkpoint}: it has no normalization.json (the action statistics the planner "
                          "needs; lewm-train writes it next to every checkpoint)")
    return model.float().eval(), run.source, run.normalization


def env_geometry(env_name: str) -> Optional[Dict[str, Any]]:
    """The environment's geometry for a JavaScript twin: Two-Room's module constants (UPPER_CASE names, as lewm_fast's
    module defines them at export time) and its default options; None for other environments."""
    if env_name != "two_room":
        return None
    from ..envs import two_room

    env = two_room.TwoRoomEnv(image_size=8)
    constants = {name: np.asarray(value).tolist() for name, value in vars(two_room).items()
                 if name.isupper() and isinstance(value, (int, float, tuple, np.ndarray))}
    options = {"speed": env.speed, "door_y": env.door_y, "door_half_width": env.door_half_width}
    return {"name": env_name, "constants": constants, "options": options}


def _sample_rows(lengths: np.ndarray, starts: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows spread evenly over all episodes' frames (sorted, unique)."""
    rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts.tolist(), lengths.tolist())])
    return np.unique(rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(np.int64)])


def latent_pca(model: LeWM, data: Union[str, os.PathLike], frames: int = 2048, points: int = 600) -> Dict[str, Any]:
    """First two principal components of the latents of up to ``frames`` frames of an episode file, and ``points`` of
    them projected (with the agent's position from the proprio column, when there is one) for a background scatter."""
    from ..data import read_layout
    from ..data.latents import encode_frames, pca
    from ..data.h5format import open_h5

    with open_h5(data) as f:
        layout = read_layout(f)
        rows = _sample_rows(layout.lengths, layout.starts, frames)
        pixels = np.stack([f[layout.columns["pixels"]][r] for r in rows])  # row by row: h5py's fancy indexing is slow
        proprio = (np.stack([f[layout.columns["proprio"]][r][:2] for r in rows]) if layout.columns["proprio"]
                   else np.zeros((len(rows), 0)))
    if layout.channels_first:
        pixels = pixels.transpose(0, 2, 3, 1)
    coords, components, mean, ratio = pca(encode_frames(model, pixels).astype(np.float64))
    keep = np.linspace(0, len(rows) - 1, min(points, len(rows))).round().astype(np.int64)
    return {
        "source": str(Path(data).resolve()),
        "frames": int(len(rows)),
        "mean": mean.tolist(),
        "components": components.tolist(),
        "explained_variance_ratio": ratio.tolist(),
        "points": np.round(np.concatenate([coords[keep], proprio[keep]], axis=1), 4).tolist(),
        "point_columns": ["pc1", "pc2", "agent_x", "agent_y"][: 2 + proprio.shape[1]],
    }


def resolve_pca(model: LeWM, source: Path, norm: Dict[str, Any], data: Optional[Union[str, os.PathLike]]) -> Dict[str, Any]:
    """The latent PCA from ``data``, else the training file ``normalization.json`` records, else the checkpoint's
    ``latent_pca.json``; ExportError when none is there."""
    trained = norm.get("data", {}).get("path")
    for candidate in (data, trained):
        if candidate is not None and Path(candidate).is_file():
            return latent_pca(model, candidate)
    if data is not None:
        raise ExportError(f"data={data} does not exist")
    shipped = (source.parent if source.is_file() else source) / PCA_FILE
    if shipped.is_file():
        return json.loads(shipped.read_text())
    raise ExportError(f"no training data for the latent PCA: {source} records {trained or 'no training file'}, which is "
                      f"not here, and has no {PCA_FILE}; pass data=<episode file>")


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: Dict[str, Dict[int, str]]) -> None:
    """torch.onnx.export by tracing (the model's shape checks run on the example inputs, their warnings silenced);
    ExportError naming the file and the exporter's reason when it fails."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                              opset_version=OPSET, dynamo=False)
        except Exception as exc:  # the tracer / exporter, whatever it raises: one line for the user
            raise ExportError(f"cannot export {path.name}: {type(exc).__name__}: {exc}") from exc


def export_graphs(model: LeWM, out: Path, history: int = 1, horizon: int = 5,
                  bounds: Optional[ActionBounds] = None) -> None:
    """Write ``encoder.onnx`` and ``planner.onnx`` for ``model`` into ``out`` (H = ``history`` context latents, T =
    ``horizon`` blocks, the planner graph applying ``bounds``)."""
    if not 1 <= history <= model.history_size:
        raise ExportError(f"history must be in [1, {model.history_size}] (the model's window), got {history}")
    if horizon < 1:
        raise ExportError(f"horizon must be >= 1, got {horizon}")
    size = model.encoder.config.image_size
    d, a = model.latent_dim, model.action_dim
    frames = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    _export(EncoderGraph(model).eval(), (frames,), out / ENCODER_FILE, ["frames"], ["latents"],
            {"frames": {0: "batch"}, "latents": {0: "batch"}})
    example = (torch.randn(history, d), torch.zeros(history - 1, a), torch.randn(4, horizon, a), torch.randn(d))
    _export(PlannerGraph(model, bounds).eval(), example, out / PLANNER_FILE,
            ["context", "action_history", "candidates", "goal"],
            ["costs", "latents"], {"candidates": {0: "samples"}, "costs": {0: "samples"}, "latents": {0: "samples"}})


def export_idm(model: LeWM, source: Path, out: Path, idm: Optional[Union[str, os.PathLike]] = None) -> Optional[Dict[str, Any]]:
    """Write ``idm.onnx`` from the GC-IDM at ``idm`` (default: the run's ``idm/``, skipped when it has none) -> the
    manifest's ``"idm"`` entry, or None. ExportError for a missing explicit IDM or one of another model."""
    from ..io.idm import default_idm_dir, idm_file, load_idm

    path = Path(idm) if idm is not None else default_idm_dir(source)
    if idm is None and not idm_file(path).is_file():
        return None
    try:
        net, meta = load_idm(path, model)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    d, a = net.latent_dim, net.action_dim
    example = (torch.randn(2, d), torch.randn(2, d), torch.ones(2))
    batch = {0: "batch"}
    _export(net, example, out / IDM_FILE, ["z", "goal", "remaining"], ["block"],
            {"z": batch, "goal": batch, "remaining": batch, "block": batch})
    return {
        "file": IDM_FILE, "sha256": file_sha256([out / IDM_FILE]), "bytes": (out / IDM_FILE).stat().st_size,
        "source_sha256": file_sha256([idm_file(path)]),
        "inputs": {"z": ["batch", d], "goal": ["batch", d], "remaining": ["batch"]}, "outputs": {"block": ["batch", a]},
        "horizon": int(net.horizon), "frameskip": int(meta["frameskip"]), "env_action_dim": int(meta["env_action_dim"]),
        "note": "z: the current frame's latent (encoder.onnx), goal: the goal frame's latent, remaining: k / horizon "
                "with k the frames (action blocks) left to the goal, in [1, horizon] (the eval's countdown: horizon "
                "minus blocks executed, at least 1). block: the next normalised action block (frameskip x env action "
                "dim, row-major, like action.mean): env action = block * std + mean, clipped to the env's box",
    }


def action_box(env_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The env's action box (low, high) in env units."""
    from .. import envs

    box = envs.make(env_name, image_size=8).action_space
    return np.asarray(box.low, dtype=np.float64), np.asarray(box.high, dtype=np.float64)


def export_bounds(model: LeWM, norm: Dict[str, Any], mode: str, weight: float) -> ActionBounds:
    """The env's action box in the model's normalised block units, as ``ActionBounds`` with ``mode`` ("none": the
    box is still recorded in the manifest, the graph ignores it)."""
    from ..data import ActionCodec

    if mode not in (*BOUND_MODES, "none"):
        raise ExportError(f"action_bounds must be one of {[*BOUND_MODES, 'none']}, got {mode!r}")
    if not weight >= 0:
        raise ExportError(f"bounds_weight must be >= 0, got {weight}")
    frameskip = int(norm["frameskip"])
    codec = ActionCodec(norm["action"]["mean"], norm["action"]["std"], frameskip, model.action_dim // frameskip)
    return ActionBounds(normalized_box(codec, *action_box(str(norm["env"]))), model.action_dim, torch.device("cpu"),
                        "clip" if mode == "none" else mode, weight)


def build_manifest(model: LeWM, source: Path, norm: Dict[str, Any], out: Path, history: int, horizon: int,
                   pca: Dict[str, Any], bounds: Optional[ActionBounds] = None, mode: str = "none") -> Dict[str, Any]:
    """The manifest of an export in ``out`` (see the module doc)."""
    from .._version import __version__
    from ..data import ActionCodec

    env_name = str(norm["env"])
    frameskip = int(norm["frameskip"])
    codec = ActionCodec(norm["action"]["mean"], norm["action"]["std"], frameskip, model.action_dim // frameskip)
    return {
        "format": FORMAT,
        "lewm_fast": __version__,
        "opset": OPSET,
        "source": {"checkpoint": str(source), "sha256": checkpoint_hash(source)},
        "model": {"image_size": model.encoder.config.image_size, "latent_dim": model.latent_dim,
                  "action_block": model.action_dim, "env_action_dim": codec.action_dim, "frameskip": frameskip,
                  "window": model.history_size, "history": history, "horizon": horizon},
        "frames": {"layout": "uint8 (B, S, S, 3) RGB", "mean": [255 * m for m in IMAGENET_MEAN],
                   "std": [255 * s for s in IMAGENET_STD], "note": "normalised inside encoder.onnx: (x - mean) / std"},
        "action": {"mean": codec.mean.ravel().tolist(), "std": codec.std.ravel().tolist(),
                   "note": "env action = block * std + mean, per block entry (frameskip x env action dim, row-major), "
                           "clipped to [-1, 1]"},
        "files": {name: {"sha256": file_sha256([out / name]), "bytes": (out / name).stat().st_size}
                  for name in (ENCODER_FILE, PLANNER_FILE)},
        "env": env_geometry(env_name) or {"name": env_name},
        "pca": pca,
        **({} if bounds is None else {"action_bounds": {
            "low": bounds.low.tolist(), "high": bounds.high.tolist(), "mode": mode, "weight": bounds.weight,
            "note": "the env's action box in normalised block units (per block entry, like action.mean). planner.onnx "
                    "applies mode: clip = candidates clamped into [low, high] before the rollout (clip your samples "
                    "too, so the mean and the executed block stay inside); penalty = costs[:, t] += weight * sum of "
                    "squared excess over blocks 1..t+1; none = a pure cost graph"}}),
    }


def read_manifest(out: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The manifest of an export folder, or None when there is none (or an unreadable one)."""
    path = Path(out) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def export_onnx(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike], history: int = 1, horizon: int = 5,
                data: Optional[Union[str, os.PathLike]] = None, action_bounds: str = DEFAULT_ACTION_BOUNDS,
                bounds_weight: float = DEFAULT_PENALTY_WEIGHT, idm: Optional[Union[str, os.PathLike]] = None,
                ) -> Dict[str, Any]:
    """Export ``checkpoint`` (a lewm-train run or checkpoint folder) to ``out``: encoder.onnx, planner.onnx,
    manifest.json, latent_pca.json (see the module doc); ``action_bounds`` (clip | penalty | none, lewm-eval's
    ``planner.action_bounds``) is what planner.onnx applies; ``idm``: a GC-IDM folder / idm.pt to export as idm.onnx
    (default: the run's ``idm/`` when present). -> the manifest. ExportError on what cannot be exported."""
    require_onnx()
    model, source, norm = load_for_export(checkpoint)
    bounds = export_bounds(model, norm, action_bounds, bounds_weight)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pca = resolve_pca(model, source, norm, data)
    export_graphs(model, out, history, horizon, None if action_bounds == "none" else bounds)
    manifest = build_manifest(model, source, norm, out, history, horizon, pca, bounds, action_bounds)
    idm_entry = export_idm(model, source, out, idm)
    if idm_entry is not None:
        manifest["idm"] = idm_entry
    (out / PCA_FILE).write_text(json.dumps(pca))
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest
