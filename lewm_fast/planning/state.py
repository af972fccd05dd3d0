"""State that outlives a call (weight packings, loop buffers, caches, warm starts, noise keys) under
``torch.inference_mode()``.

Inference-mode tensors cannot be updated in place outside inference mode and track no version counter. Callers use
``no_grad``, ``inference_mode`` (stable-worldmodel's solvers do) or plain mode, and may switch between calls, so
persistent tensors are always made as normal tensors (``persistent()``), and version checks skip inference tensors
(``version_of``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def persistent() -> Iterator[None]:
    """Within: new tensors are normal (not inference) tensors and record no autograd history."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def version_of(t: torch.Tensor) -> Optional[int]:
    """``t._version``, or None for an inference tensor (which has none: an in-place change of one, possible only
    inside inference mode, cannot be detected)."""
    return None if t.is_inference() else t._version
