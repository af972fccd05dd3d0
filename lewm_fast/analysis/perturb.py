"""Perturbed trajectories made by editing the simulator (never the pixels): at an event frame the state (or a render
colour parameter) is changed and the rest of the trajectory is simulated from there with the recorded actions.

Kinds, per environment (``PERTURBATIONS``; a kind an env lacks is reported with ``SKIPPED``'s note):

- ``teleport``: an object jumps (Two-Room: the agent to a random spot of its room a quarter frame away or more; PushT: the block
  by 80-120 px; Reacher: the shoulder by 90-180 degrees; Cube: the cube by 8-12 cm across the table);
- ``colour``: an object changes colour (Two-Room: the agent red -> blue; PushT: the block grey -> orange; Reacher: the
  arm -> orange; Cube: the cube pink -> blue). Two-Room and PushT draw with module-level colour constants, MuJoCo with
  ``geom_rgba``: both are patched for the perturbed frames and restored afterwards;
- ``pass_through``: a physically impossible crossing (Two-Room: the agent is mirrored across the wall, outside the
  door, from where it was one frame before, at the frame where it is closest to the wall; PushT: the pusher is
  mirrored through the block's centre of mass at the frame where it is closest to it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Edit = Callable[[object, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
Chooser = Callable[[object, np.ndarray, int, np.random.Generator], int]


def _uniform(env: object, states: np.ndarray, earliest: int, rng: np.random.Generator) -> int:
    return int(rng.integers(earliest, len(states) - 1))


@dataclass(frozen=True)
class Perturbation:
    """``edit(env, state, previous_state, rng) -> edited state`` at the event frame; ``colour`` patches rendering for
    the frames from the event on; ``choose(env, frame_states (F, S), earliest, rng) -> event frame`` (default: uniform
    in [earliest, F - 1))."""

    edit: Edit | None = None
    colour: Callable[[object], contextlib.AbstractContextManager] | None = None
    choose: Chooser = _uniform


def _closest(distance: Callable[[object, np.ndarray], np.ndarray]) -> Chooser:
    """The frame after the one (from ``earliest - 1`` on) minimising ``distance(env, states)`` (F,)."""
    def choose(env: object, states: np.ndarray, earliest: int, rng: np.random.Generator) -> int:
        d = distance(env, states)[earliest - 1:len(states) - 2]
        return int(np.argmin(d)) + earliest

    return choose


@contextlib.contextmanager
def _patched(module: str, name: str, value: object) -> Iterator[None]:
    mod = importlib.import_module(module)
    old = getattr(mod, name)
    setattr(mod, name, value)
    try:
        yield
    finally:
        setattr(mod, name, old)


@contextlib.contextmanager
def _rgba(rgba: np.ndarray, rows: list[int], value: tuple[float, ...]) -> Iterator[None]:
    old = rgba[rows].copy()
    rgba[rows] = value
    try:
        yield
    finally:
        rgba[rows] = old


# ---- two_room (pixels of its 224 frame: lewm_fast.envs.two_room) -------------------------------------------------------
def _two_room_teleport(env, state, previous, rng):
    from ..envs.two_room import CLEAR, FRAME, REACH, WALL_X

    x_range = (CLEAR[0], REACH[0]) if state[0] < WALL_X else (REACH[1], CLEAR[1])  # the agent's own room
    out = state.copy()
    for _ in range(100):
        out[:2] = rng.uniform(*x_range), rng.uniform(*CLEAR)
        if np.linalg.norm(out[:2] - state[:2]) >= FRAME / 4:
            break
    return out


def _two_room_wall_distance(env, states):
    from ..envs.two_room import WALL_X

    return np.where([env.in_door(y) for y in states[:, 1]], np.inf, np.abs(states[:, 0] - WALL_X))


def _two_room_pass(env, state, previous, rng):
    from ..envs.two_room import WALL_X

    out = state.copy()
    out[0], out[1] = 2 * WALL_X - previous[0], previous[1]  # mirror image across the wall
    return out


# ---- pusht ----------------------------------------------------------------------------------------------------------
def _pusht_teleport(env, state, previous, rng):
    out = state.copy()
    angle = rng.uniform(0, 2 * np.pi)
    out[2:4] = np.clip(state[2:4] + rng.uniform(80, 120) * np.array([np.cos(angle), np.sin(angle)]), 80, 430)
    return out


def _pusht_com(states: np.ndarray) -> np.ndarray:
    from ..envs.pusht import COG_LOCAL

    c, s = np.cos(states[:, 4]), np.sin(states[:, 4])
    return states[:, 2:4] + np.stack([c * COG_LOCAL[0] - s * COG_LOCAL[1], s * COG_LOCAL[0] + c * COG_LOCAL[1]], -1)


def _pusht_pass(env, state, previous, rng):
    out = state.copy()
    out[0:2] = 2 * _pusht_com(state[None])[0] - state[0:2]
    return out


# ---- reacher / cube -------------------------------------------------------------------------------------------------
def _reacher_teleport(env, state, previous, rng):
    out = state.copy()
    out[0] += rng.choice([-1.0, 1.0]) * rng.uniform(np.pi / 2, np.pi)
    return out


def _reacher_colour(env):
    model = env.physics.model
    return _rgba(model.geom_rgba, [model.name2id(n, "geom") for n in ("arm", "hand", "finger")], (1.0, 0.5, 0.0, 1.0))


def _cube_teleport(env, state, previous, rng):
    from .quantities import CUBE_XYZ

    out = state.copy()
    angle = rng.uniform(0, 2 * np.pi)
    out[CUBE_XYZ:CUBE_XYZ + 2] += rng.uniform(0.08, 0.12) * np.array([np.cos(angle), np.sin(angle)])
    return out


def _cube_colour(env):
    model = env.sim.model
    return _rgba(model.geom_rgba, [model.geom("object_0").id], (0.2, 0.4, 1.0, 1.0))


PERTURBATIONS: dict[str, dict[str, Perturbation]] = {
    "two_room": {
        "teleport": Perturbation(_two_room_teleport),
        "colour": Perturbation(colour=lambda env: _patched("lewm_fast.envs.two_room", "AGENT_RGB",
                                                           np.array([0, 0, 255], dtype=np.float32))),
        "pass_through": Perturbation(_two_room_pass, choose=_closest(_two_room_wall_distance)),
    },
    "pusht": {
        "teleport": Perturbation(_pusht_teleport),
        "colour": Perturbation(colour=lambda env: _patched("lewm_fast.envs.pusht", "BLOCK_RGB", (255, 140, 0))),
        "pass_through": Perturbation(_pusht_pass, choose=_closest(
            lambda env, s: np.linalg.norm(s[:, 0:2] - _pusht_com(s), axis=1))),
    },
    "reacher": {"teleport": Perturbation(_reacher_teleport), "colour": Perturbation(colour=_reacher_colour)},
    "cube": {"teleport": Perturbation(_cube_teleport), "colour": Perturbation(colour=_cube_colour)},
}
KINDS = ("teleport", "colour", "pass_through")
SKIPPED = {
    ("reacher", "pass_through"): "reacher has no obstacle for the arm to pass through",
    ("cube", "pass_through"): "not built for cube (the only obstacle, the table, hides a sunken cube's crossing)",
}


def perturbation(env_name: str, kind: str) -> Perturbation | None:
    """The ``kind`` perturbation of ``env_name``, or None (see ``SKIPPED``); ValueError for an unknown kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; kinds are {', '.join(KINDS)}")
    return PERTURBATIONS.get(env_name, {}).get(kind)


def simulate(env, p: Perturbation, states: np.ndarray, actions: np.ndarray, start: int, frames: int, frameskip: int,
             rng: np.random.Generator) -> np.ndarray:
    """Frames (frames, S, S, 3) of the perturbed trajectory from env step ``start`` (an event frame): the edited
    state (or patched colour) at ``start``, then the recorded ``actions`` (steps, A) every step, a frame every
    ``frameskip`` steps. ``states`` (steps, S) are the recorded states."""
    sim = env.unwrapped
    state = states[start]
    if p.edit is not None:
        state = p.edit(sim, state, states[max(start - frameskip, 0)], rng)
    sim.set_state(state)
    out = []
    with p.colour(sim) if p.colour is not None else contextlib.nullcontext():
        for i in range(frames):
            out.append(np.array(env.render(), copy=True))
            if i + 1 < frames:
                for a in actions[start + i * frameskip:start + (i + 1) * frameskip]:
                    env.step(a)
    return np.stack(out)
