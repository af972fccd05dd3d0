"""The four LeWM evaluation environments (Gymnasium API) and their data-collection policies.

``make(name, image_size=224, seed=None, **kwargs)`` builds one of ``ENV_NAMES``:

- ``two_room``: point agent in two rooms joined by a door (numpy only);
- ``pusht``: push a T block onto a target pose (needs ``pymunk``);
- ``reacher``: dm_control two-link reacher (needs ``dm_control`` + ``mujoco``);
- ``cube``: OGBench cube-single pick-and-place (needs ``ogbench`` + ``mujoco``).

The simulators are the optional ``envs`` extra (``pip install "lewm-fast[envs]"``) and are imported only when an
environment that needs them is made. Observations are dicts ``{"pixels", "proprio", "state"}``; ``env.render()`` is the
uint8 (H, W, 3) frame; ``env.unwrapped.get_state() / set_state(s) / is_success(state, goal_state)`` give exact state
access for goal-conditioned evaluation. MuJoCo renders headless through EGL unless ``MUJOCO_GL`` is set.

By default every environment follows stable-worldmodel 0.1.1's constants and protocol (the one its LeWM datasets and
evaluation use); lewm_fast's earlier variants remain available as named constructor options, listed in each module.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._mujoco import ensure_headless_gl
from .base import LeWMEnv
from .policies import DEFAULT_EXPERT_FRACTION, DEFAULT_POLICY, POLICY_KINDS, MixedPolicy, Policy, RandomPolicy, make_policy

ensure_headless_gl(strict=False)

ENV_NAMES = ("two_room", "pusht", "reacher", "cube")
_ENV_CLASSES = {
    "two_room": ("two_room", "TwoRoomEnv"),
    "pusht": ("pusht", "PushTEnv"),
    "reacher": ("reacher", "ReacherEnv"),
    "cube": ("cube", "CubeEnv"),
}


def env_class(name: str) -> type[LeWMEnv]:
    """The environment class registered under ``name`` (imports its simulator)."""
    if name not in _ENV_CLASSES:
        raise ValueError(f"unknown environment {name!r}; expected one of {', '.join(ENV_NAMES)}")
    module, cls = _ENV_CLASSES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make(name: str, image_size: int = 224, seed: int | None = None, **kwargs: Any) -> LeWMEnv:
    """Build environment ``name`` rendering ``image_size``x``image_size`` frames; ``seed`` seeds its first reset.

    Extra keyword arguments go to the environment's constructor, its options (e.g. ``physical_inertia=True`` for
    ``pusht``, ``fast_render=True`` for ``cube``; see each module). The defaults follow stable-worldmodel 0.1.1.
    """
    return env_class(name)(image_size=image_size, seed=seed, **kwargs)


__all__ = [
    "DEFAULT_EXPERT_FRACTION", "DEFAULT_POLICY", "ENV_NAMES", "LeWMEnv", "MixedPolicy", "POLICY_KINDS", "Policy",
    "RandomPolicy", "env_class", "make", "make_policy",
]
