"""Cube: OGBench ``cube-single`` (UR5e arm with a Robotiq gripper picks one cube and places it at a goal position).

Wraps OGBench's own ``CubeEnv(env_type="single")`` in its data-collection mode (cube pose, arm pose and target are
randomised at every reset) with OGBench's pixel-observation look (the ``visual-cube-single`` tasks: ``front_pixels``
camera, translucent arm, purple gripper) and the target marker hidden (``visualize_info=False``), as stable-worldmodel
0.1.1's ``swm/OGBCube-v0`` collects it (``scripts/data/collect_cube.py``). Actions are OGBench's normalised 5-D
end-effector commands (relative x, y, z, relative yaw, relative gripper opening), passed on unclipped as OGBench and
stable-worldmodel do (OGBench clips the resulting target pose to its workspace); ``clip_action=True`` clips them to
[-1, 1] first (lewm_fast's earlier handling).

State (float64, 48): MuJoCo qpos (21: 6 arm, 8 gripper, 7 cube free joint), qvel (20), target position (3) and
quaternion (4). Proprio (float32, 19): the proprioceptive head of OGBench's state observation (arm joint angles and
velocities, effector position relative to (0.425, 0, 0) times 10, cos/sin effector yaw, gripper opening times 3, gripper
contact). Success (OGBench's criterion): the cube's centre within 0.04 of the goal state's cube centre.

Rendering is MuJoCo's: on a CPU-only machine (Mesa EGL) a 224x224 frame of this 185k-triangle scene takes a few tenths
of a second, most of it in the two shadow-map passes and the floor reflection; ``fast_render=True`` turns those off
(frames then differ from OGBench's).
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

import numpy as np

from ._mujoco import prepare_rendering
from .base import LeWMEnv, check_flag, require

SUCCESS_DISTANCE = 0.04
NQ, NV = 21, 20
XYZ_CENTER = np.array([0.425, 0.0, 0.0])


def _close_renderer(sim: Any) -> None:
    renderer = getattr(sim, "_renderer", None)
    if renderer is not None:
        if renderer._gl_context is not None:  # MuJoCo frees GL objects in whichever context is current: make it ours
            renderer._gl_context.make_current()
        renderer.close()
        sim._renderer = None


def _sim_class() -> type:
    cube_env = require("ogbench.manipspace.envs.cube_env", "cube")

    class RenderOnDemandCubeEnv(cube_env.CubeEnv):
        """OGBench's cube env without the frame it renders at the end of every step for its pixel observation."""

        def compute_observation(self) -> np.ndarray:
            return np.zeros(0)

    return RenderOnDemandCubeEnv


class CubeEnv(LeWMEnv):
    name = "cube"
    action_dim = 5
    proprio_dim = 19
    state_dim = NQ + NV + 7

    def __init__(
        self, image_size: int = 224, seed: int | None = None, fast_render: bool = False, clip_action: bool = False
    ) -> None:
        fast_render = check_flag(fast_render, "fast_render")
        self.clip_actions = check_flag(clip_action, "clip_action")
        prepare_rendering()
        sim_class = _sim_class()
        self.mujoco = require("mujoco", "cube")
        super().__init__(image_size, seed)
        self.sim = sim_class(
            env_type="single", mode="data_collection", ob_type="pixels", visualize_info=False,
            terminate_at_goal=False, width=self.image_size, height=self.image_size,
        )
        self.sim.reset(seed=0)  # compiles the model
        self.sim.render()  # creates the renderer (and its EGL context)
        # Frees the GL context when this env is collected, or at exit: registered after MuJoCo's own exit hook, it
        # runs before EGL shuts down.
        self._close_gl = weakref.finalize(self, _close_renderer, self.sim)
        self._close_gl.atexit = False
        atexit.register(self._close_gl)
        if fast_render:
            for flag in (self.mujoco.mjtRndFlag.mjRND_SHADOW, self.mujoco.mjtRndFlag.mjRND_REFLECTION):
                self.sim._renderer.scene.flags[flag] = False
        model = self.sim.model
        if (model.nq, model.nv) != (NQ, NV):
            raise RuntimeError(f"unexpected OGBench cube model with nq={model.nq}, nv={model.nv}; "
                               f"lewm_fast expects nq={NQ}, nv={NV}")
        start = int(model.jnt_qposadr[model.joint("object_joint_0").id])
        self._cube_xyz = slice(start, start + 3)
        self._target_mocap = int(model.body("object_target_0").mocapid[0])

    def _sync_kinematics(self) -> None:
        """Recompute positions from qpos: after mj_step they lag one physics substep behind, and frames, proprio and
        the expert read them. Touches no quantity the dynamics depend on."""
        self.mujoco.mj_kinematics(self.sim.model, self.sim.data)
        self.mujoco.mj_camlight(self.sim.model, self.sim.data)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self.sim.reset(seed=int(rng.integers(2**31)))

    def _step_sim(self, action: np.ndarray) -> None:
        self.sim.step(action)
        self._sync_kinematics()

    def get_state(self) -> np.ndarray:
        data = self.sim.data
        return np.concatenate([
            data.qpos, data.qvel, data.mocap_pos[self._target_mocap], data.mocap_quat[self._target_mocap],
        ]).astype(np.float64)

    def _set_state(self, state: np.ndarray) -> None:
        data = self.sim.data
        data.mocap_pos[self._target_mocap] = state[NQ + NV:NQ + NV + 3]
        data.mocap_quat[self._target_mocap] = state[NQ + NV + 3:]
        self.sim.set_state(state[:NQ].copy(), state[NQ:NQ + NV].copy())

    def get_proprio(self) -> np.ndarray:
        info = self.sim.compute_ob_info()
        yaw = info["proprio/effector_yaw"]
        return np.concatenate([
            info["proprio/joint_pos"], info["proprio/joint_vel"], (info["proprio/effector_pos"] - XYZ_CENTER) * 10.0,
            np.cos(yaw), np.sin(yaw), info["proprio/gripper_opening"] * 3.0, info["proprio/gripper_contact"],
        ]).astype(np.float32)

    def cube_position(self, state: Any) -> np.ndarray:
        """Cube centre (3,) of a state."""
        return np.asarray(state, dtype=np.float64)[self._cube_xyz]

    def is_success(self, state: Any, goal_state: Any) -> bool:
        state, goal_state = self._check_pair(state, goal_state)
        return bool(np.linalg.norm(self.cube_position(state) - self.cube_position(goal_state)) <= SUCCESS_DISTANCE)

    def _task_success(self) -> bool:
        state = self.get_state()
        target = state[NQ + NV:NQ + NV + 3]
        return bool(np.linalg.norm(self.cube_position(state) - target) <= SUCCESS_DISTANCE)

    def render(self) -> np.ndarray:
        return np.ascontiguousarray(self.sim.render(), dtype=np.uint8)

    def close(self) -> None:
        self._close_gl()
        atexit.unregister(self._close_gl)
        super().close()


class CubeExpert:
    """OGBench's scripted pick-and-place oracle (approach, grasp, lift, move, place, retreat) plus Gaussian noise, as
    stable-worldmodel's cube collection policy runs it (``envs/ogbench/expert_policy.py``, ``markov_oracle``).

    Noise: each episode draws a level ``xi`` uniformly in [0, ``noise``] (0.1 there) and every action gets Gaussian noise
    of std ``xi * NOISE_SCALE`` (x, y, z, yaw x 3, gripper x 10), then is clipped to [-1, 1]. The first placement goes
    to the episode's target; each later one to a fresh random position and yaw in OGBench's target area, sampled by
    this policy (the environment is never modified). The oracle reads the simulator's live state, so call ``act`` on
    the observation of the latest ``reset``/``step``.
    """

    NOISE_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])  # expert_policy.py: normal(0, [xi, xi, xi, xi * 3, xi * 10])
    MIN_NORM = 0.4  # expert_policy.py: min_norm for the Markov oracle

    def __init__(self, env: Any, seed: int | None = None, noise: float = 0.1) -> None:
        markov = require("ogbench.manipspace.oracles.markov.cube_markov", "cube")
        self.env: CubeEnv = env.unwrapped
        self.noise = float(noise)
        self.oracle = markov.CubeMarkovOracle(env=self.env.sim, min_norm=self.MIN_NORM)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.xi = self.rng.uniform(0.0, self.noise)
        self._target: tuple[np.ndarray, float] | None = None

    def _restart_oracle(self, info: dict[str, Any]) -> None:
        self.oracle.reset(None, info)
        sim = self.env.sim
        self.oracle._final_pos = self.rng.uniform(*sim._arm_sampling_bounds)  # replaces its global-RNG draws
        self.oracle._final_yaw = self.rng.uniform(-np.pi, np.pi)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        sim = self.env.sim
        info = sim.compute_ob_info()
        if self._target is None:
            self._target = (info["privileged/target_block_pos"].copy(), float(info["privileged/target_block_yaw"][0]))
            self._restart_oracle(info)
        elif self.oracle.done:
            xy = self.rng.uniform(*sim._target_sampling_bounds)
            self._target = (np.array([xy[0], xy[1], 0.02]), float(self.rng.uniform(0, 2 * np.pi)))
            self._restart_oracle(info)
        info["privileged/target_block_pos"] = self._target[0]
        info["privileged/target_block_yaw"] = np.array([self._target[1]])
        action = np.asarray(self.oracle.select_action(None, info)) + self.xi * self.NOISE_SCALE * self.rng.standard_normal(5)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
