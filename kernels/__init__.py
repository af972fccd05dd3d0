"""Triton kernels of lewm_fast, one file per fused op; installed as ``lewm_fast.kernels``.

Importing a kernel module needs ``triton``; the dispatch layer in ``lewm_fast.ops`` only does so when the Triton
backend is selected (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
"""
