"""Reacher: the dm_control suite two-link planar reacher, rendered by MuJoCo from the fixed top-down camera.

Follows stable-worldmodel 0.1.1's ``swm/ReacherDMControl-v0`` as LeWM evaluates it (``task: qpos_match``,
``stable_worldmodel/envs/dmcontrol/reacher.py`` and ``custom_tasks/reacher.py``): the suite's model and ``Reacher`` task
(target radius 0.015) with no time limit and ``action_repeat=2`` physics steps of 0.02 s per action
(``dmcontrol.py``). Actions are the two joint torques in [-1, 1].

Success is judged as stable-worldmodel judges it: with a goal set (``set_goal_state``; its ``set_target_qpos``), each
``step`` checks ``is_success`` after every physics sub-step and ends the action at the first that succeeds
(``DMControlWrapper.step`` stops its ``action_repeat`` loop when ``_is_terminated``), returning ``terminated=True``.

State (float64, 6): shoulder and wrist angles, their velocities, target x, y.
Proprio (float32, 4): joint angles and velocities.

Options (constructor keyword arguments, e.g. ``make("reacher", success="fingertip", render_target=True)``):

- ``success`` ("qpos_match"): how :meth:`ReacherEnv.is_success` compares a state with a goal state. "qpos_match"
  (stable-worldmodel's ``ReacherQPosMatchTask``): every joint angle within 0.05 rad of the goal's, compared as raw
  angles as it does (no wrapping). "fingertip" (lewm_fast's earlier criterion): the fingertip within
  ``target_size + finger_size`` (0.015 + 0.01) of the goal's fingertip, i.e. it would touch a target drawn there.
- ``render_target`` (False): draw the target sphere (stable-worldmodel hides it: ``rendering.render_target`` 0).
- ``target_size`` (0.015), ``action_repeat`` (2).

``info["is_success"]`` and the reward always report the suite's own task (the fingertip touches the reset target).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._mujoco import prepare_rendering
from .base import LeWMEnv, check_flag, require, wrap_angle

LINK_LENGTHS = (0.12, 0.12)  # shoulder -> wrist and wrist -> fingertip, from the suite's reacher.xml
FINGER_SIZE = 0.01
TARGET_SIZE = 0.015  # stable_worldmodel/envs/dmcontrol/reacher.py: _SMALL_TARGET (tasks hard and qpos_match)
ACTION_REPEAT = 2  # stable_worldmodel/envs/dmcontrol/dmcontrol.py: DMControlWrapper.action_repeat
QPOS_THRESHOLD = 0.05  # stable_worldmodel/envs/dmcontrol/custom_tasks/reacher.py: _DEFAULT_QPOS_THRESHOLD (radians)
SUCCESS_MODES = ("qpos_match", "fingertip")
CAMERA_ID = 0


def fingertip(joint_angles: np.ndarray) -> np.ndarray:
    """Planar forward kinematics: joint angles (..., 2) -> fingertip x, y (..., 2)."""
    q = np.asarray(joint_angles, dtype=np.float64)
    l1, l2 = LINK_LENGTHS
    shoulder, elbow = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([l1 * np.cos(shoulder) + l2 * np.cos(elbow), l1 * np.sin(shoulder) + l2 * np.sin(elbow)], -1)


def inverse_kinematics(point: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Joint angles (2,) that put the fingertip at ``point`` (clamped to the reachable annulus); of the two elbow
    solutions, the one closer to ``current``."""
    l1, l2 = LINK_LENGTHS
    radius = np.clip(np.linalg.norm(point), abs(l1 - l2) + 1e-3, l1 + l2 - 1e-3)
    cos_elbow = np.clip((radius**2 - l1**2 - l2**2) / (2 * l1 * l2), -1.0, 1.0)
    candidates = []
    for elbow in (np.arccos(cos_elbow), -np.arccos(cos_elbow)):
        shoulder = np.arctan2(point[1], point[0]) - np.arctan2(l2 * np.sin(elbow), l1 + l2 * np.cos(elbow))
        candidates.append(np.array([shoulder, elbow]))
    return min(candidates, key=lambda q: np.abs(wrap_angle(q - current)).sum())


class ReacherEnv(LeWMEnv):
    name = "reacher"
    action_dim = 2
    proprio_dim = 4
    state_dim = 6

    def __init__(
        self,
        image_size: int = 224,
        seed: int | None = None,
        target_size: float = TARGET_SIZE,
        action_repeat: int = ACTION_REPEAT,
        success: str = "qpos_match",
        render_target: bool = False,
    ) -> None:
        if not 0.0 < target_size <= 0.1:
            raise ValueError(f"target_size must be in (0, 0.1], got {target_size}")
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be an int >= 1, got {action_repeat!r}")
        if success not in SUCCESS_MODES:
            raise ValueError(f"success must be one of {', '.join(SUCCESS_MODES)}, got {success!r}")
        self.success = success
        self.render_target = check_flag(render_target, "render_target")
        prepare_rendering()
        reacher = require("dm_control.suite.reacher", "reacher")
        control = require("dm_control.rl.control", "reacher")
        self.target_size = float(target_size)
        self.action_repeat = action_repeat
        self._goal_reached = False
        super().__init__(image_size, seed)
        self.physics = reacher.Physics.from_xml_string(*reacher.get_model_and_assets())
        self.task = reacher.Reacher(target_size=self.target_size, random=np.random.RandomState(0))
        self._dm_env = control.Environment(self.physics, self.task, time_limit=float("inf"))
        if not self.render_target:  # a fully transparent material, as stable-worldmodel's modify_mjcf_model sets
            self.physics.named.model.mat_rgba["target", 3] = 0.0

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._goal_reached = False
        self.task._random = np.random.RandomState(int(rng.integers(2**31)))  # the suite task samples from this
        self._dm_env.reset()

    def _step_sim(self, action: np.ndarray) -> None:
        self._goal_reached = False
        for _ in range(self.action_repeat):
            self._dm_env.step(action)
            if self._goal_state is not None and self.is_success(self.get_state(), self._goal_state):
                self._goal_reached = True  # the action ends at this sub-step, as in stable-worldmodel
                break

    def _terminates(self) -> bool:
        return self._goal_reached

    def get_state(self) -> np.ndarray:
        data = self.physics.data
        target = self.physics.named.model.geom_pos["target", ["x", "y"]]
        return np.concatenate([data.qpos, data.qvel, target]).astype(np.float64)

    def _set_state(self, state: np.ndarray) -> None:
        with self.physics.reset_context():
            self.physics.data.qpos[:] = state[0:2]
            self.physics.data.qvel[:] = state[2:4]
            self.physics.named.model.geom_pos["target", ["x", "y"]] = state[4:6]

    def get_proprio(self) -> np.ndarray:
        return np.concatenate([self.physics.data.qpos, self.physics.data.qvel]).astype(np.float32)

    @property
    def success_radius(self) -> float:
        return self.target_size + FINGER_SIZE

    def is_success(self, state: Any, goal_state: Any) -> bool:
        state, goal_state = self._check_pair(state, goal_state)
        if self.success == "qpos_match":
            return bool(np.all(np.abs(state[:2] - goal_state[:2]) < QPOS_THRESHOLD))
        return bool(np.linalg.norm(fingertip(state[:2]) - fingertip(goal_state[:2])) <= self.success_radius)

    def _task_success(self) -> bool:
        return bool(self.physics.finger_to_target_dist() <= self.success_radius)

    def render(self) -> np.ndarray:
        frame = self.physics.render(height=self.image_size, width=self.image_size, camera_id=CAMERA_ID)
        return np.ascontiguousarray(frame, dtype=np.uint8)


class ReacherExpert:
    """Joint-space PD controller toward the inverse-kinematics solution for a target point, plus Gaussian noise.

    It first reaches the episode's target (``state[4:6]``) and then fresh random points of the target's annulus.
    """

    def __init__(self, env: Any, seed: int | None = None, noise: float = 0.2, kp: float = 2.0, kd: float = 0.15):
        self.env: ReacherEnv = env.unwrapped
        self.noise, self.kp, self.kd = float(noise), float(kp), float(kd)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self._goal: np.ndarray | None = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        q, dq = state[0:2], state[2:4]
        if self._goal is None:
            self._goal = state[4:6].copy()
        if np.linalg.norm(fingertip(q) - self._goal) <= self.env.success_radius:
            angle, radius = self.rng.uniform(0, 2 * np.pi), self.rng.uniform(0.05, 0.20)
            self._goal = radius * np.array([np.sin(angle), np.cos(angle)])
        error = wrap_angle(inverse_kinematics(self._goal, q) - q)
        action = self.kp * error - self.kd * dq + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
