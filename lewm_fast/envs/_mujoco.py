"""Headless OpenGL selection for the MuJoCo-based environments (Reacher, Cube)."""

from __future__ import annotations

import ctypes
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
    """Load Triton's compiler library so that it cannot collide with an OpenGL driver's LLVM (no-op without triton,
    or when triton is already imported).

    Mesa's software drivers (EGL, OSMesa or GLX on a machine without a GPU driver: llvmpipe) load the system's
    ``libLLVM`` into the process's global symbol scope when the first display or context is made (dm_control makes one
    at ``from dm_control import suite``). ``libtriton.so`` links its own LLVM statically, but its symbols are
    interposable: loaded after Mesa's, its static initialisers bind to the system ``libLLVM`` and crash (SIGSEGV in
    ``llvm::cl::Option::addArgument`` while Python imports triton; torch imports triton too, e.g. for ``torch.optim`` or
    ``torch.compile``). So when a ``libLLVM`` is already mapped, ``libtriton.so`` is first loaded with
    ``RTLD_DEEPBIND`` (its own definitions before the global scope's), and ``import triton`` then reuses that copy;
    otherwise triton is imported as usual, before any OpenGL context exists, and binds to its own copy anyway.
    """
    if "triton" in sys.modules:
        return
    spec = importlib.util.find_spec("triton")
    if spec is None:
        return
    library = os.path.join(next(iter(spec.submodule_search_locations or ()), ""), "_C", "libtriton.so")
    if _llvm_loaded() and hasattr(os, "RTLD_DEEPBIND") and os.path.isfile(library):
        ctypes.CDLL(library, mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    importlib.import_module("triton")


def _llvm_loaded() -> bool:
    """Whether a shared ``libLLVM`` is mapped into this process (Linux: /proc/self/maps; False elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("/libLLVM" in line for line in maps)
    except OSError:
        return False


def prepare_rendering() -> None:
    """What a MuJoCo-based environment runs before it creates its simulator and renderer."""
    ensure_headless_gl()
    load_triton_before_gl()
