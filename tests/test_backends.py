"""Backend discovery and dispatch: lewm_fast imports without the C++ extension and says what it runs on."""

import subprocess
import sys

import pytest
import torch

from lewm_fast.backends import csrc_available, describe, resolve_backend


def test_import_without_extension_warns_and_uses_reference():
    code = (
        "import sys, warnings; sys.modules['lewm_fast._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import lewm_fast\n"
        "print(lewm_fast.resolve_backend('auto', 'cpu')); print(any('reference' in str(x.message) for x in w))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["reference", "True"]


def test_auto_on_cpu():
    assert resolve_backend("auto", "cpu") == ("cpu" if csrc_available() else "reference")
    assert resolve_backend("reference", "cpu") == "reference"


def test_bad_backend_names_and_devices():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CPU tensors"):
            resolve_backend("cpu", "cuda")


def test_describe_reports_versions():
    info = describe()
    assert info["torch"] == torch.__version__
    assert info["csrc"] == csrc_available()
    assert info["auto_backend_cpu"] in ("cpu", "reference")


def test_import_stays_light():
    """``import lewm_fast`` must not pull in torch._dynamo (seconds of import time, and ~100k objects that every
    full garbage collection then walks: measurable in the planning loop)."""
    code = "import sys, lewm_fast; print('torch._dynamo' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_demo_says_what_it_does_before_each_slow_step():
    """``lewm-fast demo`` used to print nothing during its warm-ups: each step now announces itself (and the threads)
    before it runs, flushed, so the first line appears at once."""
    proc = subprocess.Popen([sys.executable, "-m", "lewm_fast.cli.info", "demo", "--n-steps", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()  # arrives before the model is built
    rest, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, rest[-2000:]
    assert first.startswith("... building the paper-size LeWM") and "torch threads" in first
    lines = [first, *rest.splitlines()]
    announce = [i for i, line in enumerate(lines) if line.startswith("... planning with")]
    result = [i for i, line in enumerate(lines) if line.startswith("reference CEMSolver:")]
    assert len(announce) == 2 and announce[0] < result[0]
