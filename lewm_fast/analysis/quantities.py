"""The physical quantities each environment stores, read from its per-step ``state`` (and ``proprio``) vectors.

One table, ``QUANTITIES``: env name -> quantity name -> function of (state (N, S), proprio (N, P)) -> (N,). The state
layouts it reads (see each env module in ``lewm_fast.envs``):

- two_room, state (4): agent x, y, target x, y (units of the arena side, y downwards);
- pusht, state (7): pusher x, y, block x, y (body origin: the top centre of the T's bar), block angle in [0, 2pi),
  pusher vx, vy (pixels of the 512 arena); the angle is probed as sin / cos (continuous across 0 = 2pi);
- reacher, state (6): shoulder and wrist angles (rad), their velocities, target x, y; the shoulder joint is unlimited
  (probed as sin / cos), the wrist is limited to about +-160 degrees (probed raw); the fingertip follows by planar
  forward kinematics (``lewm_fast.envs.reacher.fingertip``, links 0.12 + 0.12);
- cube, state (48): MuJoCo qpos (21: 6 arm joints, 8 gripper joints, cube free joint x, y, z, quaternion), qvel (20),
  target position (3) and quaternion (4); the gripper (end-effector) position is not in the state vector but in
  proprio (19): entries 12..14 hold (effector position - (0.425, 0, 0)) * 10, entry 17 the gripper opening * 3.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Quantity = Callable[[np.ndarray, np.ndarray], np.ndarray]
STATE_DIMS = {"two_room": 4, "pusht": 7, "reacher": 6, "cube": 48}
PROPRIO_DIMS = {"cube": 19}  # envs whose quantities also read proprio
CUBE_XYZ = 14  # qpos index of the cube's free-joint position (after 6 arm + 8 gripper joints)
CUBE_EFFECTOR = 12  # proprio index of the scaled effector position
CUBE_CENTER = np.array([0.425, 0.0, 0.0])


def _state(i: int) -> Quantity:
    return lambda state, proprio: state[:, i]


def _fingertip(axis: int) -> Quantity:
    def read(state: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        from ..envs.reacher import fingertip

        return fingertip(state[:, 0:2])[:, axis]

    return read


def _effector(axis: int) -> Quantity:
    return lambda state, proprio: proprio[:, CUBE_EFFECTOR + axis] / 10.0 + CUBE_CENTER[axis]


QUANTITIES: dict[str, dict[str, Quantity]] = {
    "two_room": {"agent_x": _state(0), "agent_y": _state(1)},
    "pusht": {
        "agent_x": _state(0), "agent_y": _state(1), "block_x": _state(2), "block_y": _state(3),
        "block_angle_sin": lambda s, p: np.sin(s[:, 4]), "block_angle_cos": lambda s, p: np.cos(s[:, 4]),
    },
    "reacher": {
        "shoulder_sin": lambda s, p: np.sin(s[:, 0]), "shoulder_cos": lambda s, p: np.cos(s[:, 0]),
        "wrist_angle": _state(1), "fingertip_x": _fingertip(0), "fingertip_y": _fingertip(1),
    },
    "cube": {
        "cube_x": _state(CUBE_XYZ), "cube_y": _state(CUBE_XYZ + 1), "cube_z": _state(CUBE_XYZ + 2),
        "gripper_x": _effector(0), "gripper_y": _effector(1), "gripper_z": _effector(2),
        "gripper_opening": lambda s, p: p[:, 17] / 3.0,
    },
}
PLANE = {"two_room": ("agent_x", "agent_y"), "pusht": ("agent_x", "agent_y"), "reacher": ("fingertip_x", "fingertip_y"),
         "cube": ("cube_x", "cube_y")}
"""The two quantities that give each env's own 2-D coordinates (the viewer's plane)."""


def resolve_quantities(env: str | None, names: Sequence[str] | None = None) -> list[str]:
    """The quantity names to read for ``env`` (all of its table by default); ValueError naming what exists."""
    if env not in QUANTITIES:
        raise ValueError(f"no quantity table for env {env!r} (tables: {', '.join(QUANTITIES)}); pass env=<name> for a "
                         "file that records no environment")
    table = QUANTITIES[env]
    names = list(table) if not names else list(names)
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"{env} data has no quantity {missing[0]!r}; its quantities are {', '.join(table)}")
    return names


def read_quantities(env: str, names: Sequence[str], state: np.ndarray, proprio: np.ndarray) -> np.ndarray:
    """The quantities ``names`` of ``env`` at N steps: state (N, S), proprio (N, P) -> float64 (N, Q). ValueError when
    the vectors are not the env's layout (e.g. a file without simulator states)."""
    state, proprio = np.asarray(state, np.float64), np.asarray(proprio, np.float64)
    check_layout(env, state.shape[-1], proprio.shape[-1])
    table: Mapping[str, Quantity] = QUANTITIES[env]
    return np.stack([table[n](state, proprio) for n in names], axis=-1) if names else np.zeros((len(state), 0))


def check_layout(env: str, state_dim: int, proprio_dim: int) -> None:
    """ValueError unless per-step state / proprio widths are those the quantity table of ``env`` reads."""
    if state_dim == 0:
        raise ValueError(f"the data has no simulator states (a 'state' column), which the {env} quantities are read "
                         "from; use an episode file written by lewm-collect (or map columns.state=<name>)")
    if state_dim != STATE_DIMS[env]:
        raise ValueError(f"the data's states are {state_dim}-wide, but {env}'s quantity table reads lewm_fast's "
                         f"{STATE_DIMS[env]}-wide {env} state; the file was recorded with another state layout")
    if env in PROPRIO_DIMS and proprio_dim != PROPRIO_DIMS[env]:
        raise ValueError(f"{env} quantities need the {PROPRIO_DIMS[env]}-wide proprio vector, got {proprio_dim}")
