"""Input checks shared by the public API. Each raises ``TypeError`` (wrong type/dtype) or ``ValueError``
(wrong rank, size or non-finite values) with a message naming the argument and what was expected."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    last_dim: Optional[int] = None,
    floating: bool = True,
    finite: bool = False,
    nonempty: bool = True,
) -> torch.Tensor:
    """Validate ``x`` and return it unchanged.

    ndim: the allowed rank(s); last_dim: required size of the last axis; floating: require a floating dtype;
    finite: reject NaN/inf; nonempty: reject tensors with a zero-sized axis.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32/bfloat16/float16/float64), got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and (x.dim() == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def check_same_leading(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, n: int) -> None:
    """Require ``a.shape[:n] == b.shape[:n]`` (no silent broadcasting)."""
    if tuple(a.shape[:n]) != tuple(b.shape[:n]):
        raise ValueError(
            f"{a_name} and {b_name} must agree on their first {n} dimensions, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Require an ``int`` (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
