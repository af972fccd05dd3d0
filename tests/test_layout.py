"""Repository layout guard: the Triton kernels are the top-level ``kernels/`` folder, installed as ``lewm_fast.kernels``
(setup.py package_dir). That only the dispatch layer ``lewm_fast/ops/`` imports them is an import contract
(pyproject.toml, tests/test_import_contracts.py)."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lewm_fast"
KERNEL_MODULES = sorted(p.stem for p in (ROOT / "kernels").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_kernel_modules_are_the_top_level_kernels_folder(name):
    pytest.importorskip("triton")
    module = importlib.import_module(f"lewm_fast.kernels.{name}")
    assert Path(module.__file__).resolve() == ROOT / "kernels" / f"{name}.py"
