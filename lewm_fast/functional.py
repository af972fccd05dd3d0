"""Functional forms of the fast ops (each dispatches on device with a ``backend=`` override)."""

from .ops.elite_refit import elite_refit
from .ops.sigreg import sigreg

__all__ = ["elite_refit", "sigreg"]
