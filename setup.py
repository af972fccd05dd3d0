"""Build script: packages ``lewm_fast`` (with ``kernels/`` installed as ``lewm_fast.kernels``) and compiles
``csrc/*.cpp`` into the torch C++ extension ``lewm_fast._C`` (ninja, OpenMP).

The extension must be built against the very torch it will run with, so the build imports the installed torch:
install torch first, then ``pip install --no-build-isolation .`` (a build-isolated install cannot see it and stops
with a message saying so). torch's ``BuildExtension`` picks the C++ standard its headers need (C++17 on older
releases, C++20 on current ones; torch 2.14's headers refuse anything older than C++20), so none is forced here.

Set ``LEWM_FAST_NO_EXT=1`` to skip the extension; ``lewm_fast`` then runs on its reference/Triton backends.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

packages = find_packages(include=["lewm_fast", "lewm_fast.*"]) + ["lewm_fast.kernels"]
package_dir = {"lewm_fast.kernels": "kernels"}

NO_TORCH = """
lewm_fast: cannot import torch in this build environment.

The C++ extension lewm_fast._C is compiled against the torch you will run it with, so install torch first and build
without pip's build isolation (an isolated build cannot see the installed torch):

    pip install torch            # your CPU or CUDA build
    pip install --no-build-isolation .        (or: pip install --no-build-isolation -e .)

or skip the extension (the CPU paths then use the plain-PyTorch reference):

    LEWM_FAST_NO_EXT=1 pip install .
"""

ext_modules = []
cmdclass = {}
if os.environ.get("LEWM_FAST_NO_EXT", "0") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.stderr.write(NO_TORCH)
        raise SystemExit(1)

    openmp = ["-fopenmp"] if os.name != "nt" else ["/openmp"]
    ext_modules.append(
        CppExtension(
            name="lewm_fast._C",
            sources=sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
            depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),  # rebuilt when they change; shipped in sdists
            extra_compile_args=["-O3", *openmp],  # no -std: BuildExtension adds the one torch's headers need
            extra_link_args=openmp,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
