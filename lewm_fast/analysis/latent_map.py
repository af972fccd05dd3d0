"""A 2-D map of the latent space: PCA (or UMAP when ``umap-learn`` is installed) of the frozen-encoder latents of
many episodes, with a ground-truth quantity and the time step of every point."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from .._validation import check_positive_int
from ..data.latents import encode_frames, pca
from .quantities import read_quantities, resolve_quantities
from .sources import ModelSource, load_inputs

METHODS = ("auto", "pca", "umap")


def embed(latents: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str, str]:
    """latents (N, D) -> (2-D coordinates (N, 2), method used, note). ``auto``: UMAP when umap-learn is installed,
    else PCA; ``umap`` without umap-learn is a ValueError."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    has_umap = importlib.util.find_spec("umap") is not None
    if method == "umap" and not has_umap:
        raise ValueError("method=umap needs umap-learn: pip install umap-learn (or lewm-fast[analysis]); method=pca "
                         "works without it")
    if method == "pca" or not has_umap:
        coords, _, _, ratio = pca(latents)
        note = f"PCA, {100 * ratio.sum():.0f} % of the variance" + (" (umap-learn not installed)" if method == "auto" else "")
        return coords, "pca", note
    import umap

    return umap.UMAP(n_components=2, random_state=seed).fit_transform(latents), "umap", "UMAP (umap-learn)"


def latent_map(model: ModelSource, data: str, *, env: str | None = None, quantity: str | None = None,
               episodes: int | list[int] | None = 50, every: int = 1, method: str = "auto", highlight: int = 0,
               seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """2-D map of the latents of every ``every``-th frame of ``data``'s first ``episodes`` episodes (or those listed).
    ``quantity`` (default: the env's first) colours the points; ``highlight`` is the position, in the episodes read,
    of the episode drawn as a path. -> {"coords" (N, 2), "episode" (N,), "step" (N,), "value" (N,), "quantity",
    "method", "note", "highlight" (file episode index), "env"}."""
    check_positive_int(every, "every")
    inputs = load_inputs(model, data, episodes, env, device)
    eps, name = inputs.episodes, inputs.env
    [q] = resolve_quantities(name, [quantity] if quantity else None)[:1]
    if not 0 <= highlight < len(eps.ids):
        raise ValueError(f"highlight must be in [0, {len(eps.ids)}) (an episode among those read), got {highlight}")
    frames = np.concatenate([f[::every] for f in eps.frames])
    coords, used, note = embed(encode_frames(inputs.model, frames), method, seed)
    return {
        "env": name, "data": str(eps.path), "coords": coords, "quantity": q, "method": used, "note": note,
        "episode": np.concatenate([np.full(len(f[::every]), i) for i, f in zip(eps.ids, eps.frames)]),
        "step": np.concatenate([np.arange(0, len(f), every) for f in eps.frames]),
        "value": np.concatenate([read_quantities(name, [q], s[::every], p[::every])[:, 0]
                                 for s, p in zip(eps.state, eps.proprio)]),
        "highlight": eps.ids[highlight],
    }
