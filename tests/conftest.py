"""Shared fixtures: a tiny LeWM (fast on CPU) built from a stable-worldmodel-style config; Triton interpreter on CPU."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; it must be on before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lewm_fast import build_model, default_config
from lewm_fast.io import TINY_CONFIG


def tiny_config(**overrides) -> dict:
    return default_config(**{**TINY_CONFIG, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (incl. the zero-initialised AdaLN layers) non-trivial values, and BN non-trivial stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return randomize_(build_model(tiny_config())).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and immune to oversubscription on a busy 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
