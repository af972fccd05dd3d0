"""Fast ops with a single dispatch point each: ``<op>(..., backend="auto"|"triton"|"cpu"|"reference")``."""

from .elite_refit import elite_refit
from .sigreg import SIGReg, sigreg

__all__ = ["SIGReg", "elite_refit", "sigreg"]
