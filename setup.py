"""Build script: packages ``lewm_fast`` (with ``kernels/`` installed as ``lewm_fast.kernels``) and compiles
``csrc/*.cpp`` into the torch C++ extension ``lewm_fast._C`` (ninja, OpenMP).

Set ``LEWM_FAST_NO_EXT=1`` to skip the extension; ``lewm_fast`` then runs on its reference/Triton backends.
"""

import glob
import os

from setuptools import find_packages, setup

packages = find_packages(include=["lewm_fast", "lewm_fast.*"]) + ["lewm_fast.kernels"]
package_dir = {"lewm_fast.kernels": "kernels"}

ext_modules = []
cmdclass = {}
if os.environ.get("LEWM_FAST_NO_EXT", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    openmp = ["-fopenmp"] if os.name != "nt" else ["/openmp"]
    ext_modules.append(
        CppExtension(
            name="lewm_fast._C",
            sources=sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
            extra_compile_args=["-O3", "-std=c++17", *openmp],
            extra_link_args=openmp,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"lewm_fast": ["configs/*.yaml", "configs/**/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
