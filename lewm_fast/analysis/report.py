"""Analysis results as JSON: numpy arrays and scalars to lists and numbers, NaN / inf to null."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(value: Any, drop: Collection[str] = ()) -> Any:
    """``value`` with numpy arrays / scalars as lists / numbers, non-finite floats as None and ``drop`` keys left out."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), drop)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, drop) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str | os.PathLike, result: dict[str, Any], drop: Collection[str] = ()) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result, drop), indent=1))
    return path
