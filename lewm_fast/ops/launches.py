"""Recording the Triton kernel launches of the ops: inside ``record_launches()``, the ``"triton"`` paths of the ops
called on meta tensors append what they would launch (``Launch``: kernel, grid, arguments, constexprs) instead of
running it; ``lewm_fast.precompile`` and ``lewm_fast.aot`` compile exactly those specializations. The recorder lives
with the kernels (``kernels/_launch.py``); this is the entry point for the rest of the package."""

from ..kernels._launch import H100_SM_COUNT, Launch, record_launches

__all__ = ["H100_SM_COUNT", "Launch", "record_launches"]
