"""Frozen-encoder latents of episode frames, shared by the analyses and the ONNX export: frames as the model sees
them (``to_model_input``, the dataset's resize and normalisation), their latents (``encode_frames``) and principal
components (``pca``)."""

from __future__ import annotations

import numpy as np
import torch

from ..reference.lewm import LeWM
from ..reference.vit import preprocess_frames
from .dataset import resize_frames


def model_image_size(model: LeWM) -> int:
    """The frame size the model's encoder takes (224 when its config names none)."""
    return int((model.config or {}).get("encoder", {}).get("image_size", 224))


def to_model_input(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 frames (N, S, S, 3) -> ImageNet-normalised (N, 3, image_size, image_size), resized as
    ``SequenceDataset`` resizes (antialiased bilinear, rounded to uint8 levels) when S differs."""
    return preprocess_frames(resize_frames(torch.from_numpy(np.ascontiguousarray(frames)), image_size))


@torch.no_grad()
def encode_frames(model: LeWM, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Frozen-encoder latents of uint8 frames (N, S, S, 3) -> float32 (N, D)."""
    device, size = next(model.parameters()).device, model_image_size(model)
    out = [model.encode(to_model_input(frames[i:i + batch_size], size).unsqueeze(1).to(device))[:, 0].float().cpu()
           for i in range(0, len(frames), batch_size)]
    return torch.cat(out).numpy()


def pca(x: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x (N, D) -> (coordinates (N, dims), components (dims, D), mean (D,), explained variance ratio (dims,))."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    ratio = var[:dims] / var.sum() if var.sum() > 0 else np.zeros(dims)
    return (x - mean) @ vt[:dims].T, vt[:dims], mean, ratio
