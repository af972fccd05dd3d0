"""Headless OpenGL selection for the MuJoCo-based environments (Reacher, Cube)."""

from __future__ import annotations

import importlib.util
import os
import sys


def ensure_headless_gl(strict: bool = True) -> None:
    """Render through EGL when no display is available, unless ``MUJOCO_GL`` already names a backend.

    MuJoCo and dm_control read ``MUJOCO_GL`` when they are first imported, so this must run before those imports
    (``import lewm_fast.envs`` runs it with ``strict=False``). EGL with Mesa renders on a CPU-only machine (software
    rasteriser); ``MUJOCO_GL=osmesa`` selects OSMesa instead. ``strict``: raise if MuJoCo was already imported without
    a usable backend, instead of leaving it to fail at the first render.
    """
    if "MUJOCO_GL" in os.environ or os.environ.get("DISPLAY"):
        return
    if "mujoco" in sys.modules:
        if strict:
            raise RuntimeError(
                "mujoco was imported before a headless OpenGL backend was chosen and there is no display; "
                "set MUJOCO_GL=egl (or osmesa) in the environment before starting Python"
            )
        return
    os.environ["MUJOCO_GL"] = "egl"


def load_triton_before_gl() -> None:
    """Load Triton's compiler library before an OpenGL context exists in this process (no-op without triton).

    Mesa's software drivers (EGL, OSMesa or GLX on a machine without a GPU driver: llvmpipe) load the system's
    ``libLLVM`` into the process's global symbol scope. ``libtriton.so`` links its own LLVM statically, but its symbols
    are interposable: loaded after Mesa's, its static initialisers bind to the system ``libLLVM`` and crash (SIGSEGV in
    ``llvm::cl::Option::addArgument`` while Python imports it; torch imports triton too, e.g. for ``torch.optim`` or
    ``torch.compile``). Loaded first, and locally (Python extensions are ``RTLD_LOCAL``), it binds to its own copy and
    the driver's ``libLLVM`` to the system one.
    """
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")


def prepare_rendering() -> None:
    """What a MuJoCo-based environment runs before it creates its simulator and renderer."""
    ensure_headless_gl()
    load_triton_before_gl()
