"""The import contracts of pyproject.toml ([tool.importlinter]: no cycles, the floors of docs/ARCHITECTURE.md, an oracle
that imports nothing fast, only ops/ importing the Triton kernels), checked by import-linter, and a check that they
can fail. ``lewm_fast.kernels`` is the top-level kernels/ folder installed under that name (setup.py package_dir), which
import-graph tools walking lewm_fast/ do not see: the contracts run on a mirror of the package's modules with
kernels/ placed at lewm_fast/kernels, so they cover it like any other subpackage."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]


def _mirror(tmp_path: Path) -> Path:
    """tmp_path/lewm_fast: the package's .py files, with kernels/*.py as lewm_fast/kernels."""
    package = tmp_path / "lewm_fast"
    shutil.copytree(ROOT / "lewm_fast", package, ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n in ("node_modules", "__pycache__")])
    shutil.copytree(ROOT / "kernels", package / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return package


def _lint(mirror_root: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts, importing lewm_fast from the mirror."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports_command; "
            "lint_imports_command([sys.argv[2], '--no-cache'])")
    return subprocess.run([sys.executable, "-c", code, str(mirror_root), str(ROOT / "pyproject.toml")],
                          capture_output=True, text=True, cwd=mirror_root, timeout=300)


def test_the_package_keeps_its_import_contracts(tmp_path):
    _mirror(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("planning/base.py", "from ..kernels import elite_refit", "only the dispatch layer ops/ imports the Triton kernels"),
    ("reference/modules.py", "from ..planning import base", "the oracle imports nothing fast"),
    ("io/build.py", "from ..training import trainer", "floors: higher imports lower, never the reverse"),
    ("config.py", "from . import cli", "floors: higher imports lower, never the reverse"),
])
def test_a_violation_breaks_its_contract(tmp_path, module, line, contract):
    path = _mirror(tmp_path) / module
    path.write_text(path.read_text() + f"\n\ndef _violation():\n    {line}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
