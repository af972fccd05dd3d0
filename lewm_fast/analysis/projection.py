"""Linear maps from latents to a 2-D plane: a fitted linear probe onto two env quantities (the env's own coordinates)
or the first two principal components of some latents."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.latents import pca
from .quantities import PLANE


@dataclass(frozen=True)
class LatentProjection:
    """latents (..., D) -> (..., 2) = latents @ weight + bias; ``weight`` (D, 2), ``bias`` (2,); ``axes`` names the two
    coordinates; ``kind`` is "probe" (env quantities) or "pca"."""

    weight: np.ndarray
    bias: np.ndarray
    axes: tuple[str, str]
    kind: str

    @property
    def latent_dim(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        return np.asarray(latents, np.float64) @ self.weight + self.bias

    def check(self, latent_dim: int) -> None:
        """ValueError unless the projection takes ``latent_dim``-wide latents (those of the model it is used with)."""
        if latent_dim != self.latent_dim:
            raise ValueError(f"the {self.kind} projection maps {self.latent_dim}-d latents, but the model's latent size "
                             f"is {latent_dim}: fit the probe on this checkpoint (lewm-analyze probe checkpoint=...)")

    @classmethod
    def pca(cls, latents: np.ndarray) -> "LatentProjection":
        """The first two principal components of latents (N, D)."""
        _, components, mean, _ = pca(np.asarray(latents, np.float64))
        return cls(components.T, -mean @ components.T, ("PC 1", "PC 2"), "pca")

    @classmethod
    def from_probe(cls, result: Mapping[str, Any] | str | os.PathLike, axes: Sequence[str] | None = None,
                   model: str = "trained") -> "LatentProjection":
        """The linear probe of a ``probe`` result (the dict, or the JSON file ``lewm-analyze probe`` writes) onto two of
        its quantities (default: the env's plane, e.g. agent_x, agent_y)."""
        if not isinstance(result, Mapping):
            result = json.loads(Path(result).read_text())
        names = list(result["quantities"])
        axes = tuple(axes or PLANE.get(result["env"], names[:2]))
        missing = [a for a in axes if a not in names]
        if len(axes) != 2 or missing:
            raise ValueError(f"a projection needs two of the probe's quantities ({', '.join(names)}), got {list(axes)}")
        linear = result["models"][model]["linear_map"]
        cols = [names.index(a) for a in axes]
        weight, bias = np.asarray(linear["weight"], np.float64)[:, cols], np.asarray(linear["bias"], np.float64)[cols]
        return cls(weight, bias, axes, "probe")  # type: ignore[arg-type]
