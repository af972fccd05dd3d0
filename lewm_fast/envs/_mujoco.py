"""Headless OpenGL selection for the MuJoCo-based environments (Reacher, Cube)."""

from __future__ import annotations

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
