"""Fast ops with a single dispatch point each: ``<op>(..., backend="auto"|"triton"|"cpu"|"reference")``."""

from .elite_refit import elite_refit

__all__ = ["elite_refit"]
