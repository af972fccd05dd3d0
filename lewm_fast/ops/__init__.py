"""Fast ops with a single dispatch point each: ``<op>(..., backend="auto"|"triton"|"cpu"|"reference")``.

One module per op, named like its Triton kernel (``kernels/``), C++ source (``csrc/``) and tests: ``elite_refit``,
``sigreg`` and ``predictor`` (the rollout's window ops, as ``PredictorOps`` / ``CpuOps`` / ``TritonOps``);
``launches`` records the Triton launches of the ops on meta tensors. The only layer that imports ``lewm_fast.kernels``.
"""

from .elite_refit import elite_refit
from .sigreg import SIGReg, sigreg

__all__ = ["SIGReg", "elite_refit", "sigreg"]
