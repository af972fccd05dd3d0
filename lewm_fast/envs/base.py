"""Shared Gymnasium base class of the four LeWM evaluation environments.

Every environment observes ``{"pixels": uint8 (H,W,3), "proprio": float32 (P,), "state": float64 (S,)}``:
``pixels`` is ``render()``, ``proprio`` what a robot senses about itself, and ``state`` the full simulator state that
``set_state`` restores (the state a goal frame is rendered from in goal-conditioned evaluation).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

EXTRA_HINT = 'pip install "lewm-fast[envs]"'


def require(module: str, env_name: str) -> ModuleType:
    """Import an optional simulator, or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"the {env_name!r} environment needs the optional package {module.split('.')[0]!r}; "
            f"install the simulators with: {EXTRA_HINT}"
        ) from exc


def check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if not 8 <= int(image_size) <= 4096:
        raise ValueError(f"image_size must be in [8, 4096] pixels, got {image_size}")
    return int(image_size)


def check_flag(value: object, name: str) -> bool:
    """A boolean environment option, or a TypeError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Map angles to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class LeWMEnv(gym.Env, ABC):
    """Continuous-action, pixel-rendering, goal-conditioned environment with an exact state interface.

    Subclasses set ``action_dim``, ``proprio_dim``, ``state_dim`` and implement the simulator hooks. ``truncated`` is
    always False and ``terminated`` is False unless an environment ends its episodes at its own task the way
    stable-worldmodel's does (Two-Room at its target, see :meth:`_terminates`; Reacher at a goal set with
    :meth:`set_goal_state`): collection caps the episode length and evaluation decides success with
    :meth:`is_success`. ``clip_actions``: whether actions are clipped to [-1, 1] before they reach the simulator (False
    where stable-worldmodel's simulator takes them unclipped: PushT, Cube).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    name: str
    action_dim: int
    proprio_dim: int
    state_dim: int
    clip_actions: bool = True

    def __init__(self, image_size: int = 224, seed: int | None = None) -> None:
        self.image_size = check_image_size(image_size)
        self.render_mode = "rgb_array"
        self._initial_seed = seed
        self._needs_reset = True
        self._goal_state: np.ndarray | None = None
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, shape=(self.proprio_dim,), dtype=np.float32),
                "state": spaces.Box(-np.inf, np.inf, shape=(self.state_dim,), dtype=np.float64),
            }
        )

    # ---- simulator hooks -------------------------------------------------------------------------------------------
    @abstractmethod
    def _reset_sim(self, rng: np.random.Generator) -> None:
        """Sample a fresh initial state with ``rng``."""

    @abstractmethod
    def _step_sim(self, action: np.ndarray) -> None:
        """Advance the simulation by one control step with an action checked by :meth:`check_action`."""

    @abstractmethod
    def get_state(self) -> np.ndarray:
        """The full simulator state, float64 (state_dim,)."""

    @abstractmethod
    def _set_state(self, state: np.ndarray) -> None:
        """Restore a state returned by ``get_state`` (already validated)."""

    @abstractmethod
    def get_proprio(self) -> np.ndarray:
        """Proprioception, float32 (proprio_dim,)."""

    @abstractmethod
    def render(self) -> np.ndarray:
        """The current frame, uint8 (image_size, image_size, 3)."""

    @abstractmethod
    def is_success(self, state: np.ndarray, goal_state: np.ndarray) -> bool:
        """Whether ``state`` solves the goal given by ``goal_state`` (both from ``get_state``)."""

    @abstractmethod
    def _task_success(self) -> bool:
        """Whether the current state solves the episode's own task (the reset target); reported as ``info`` and
        reward, while goal-conditioned evaluation uses :meth:`is_success` with its goal states."""

    def _terminates(self) -> bool:
        """Whether the current state ends the episode (``terminated``); never, unless an environment overrides it."""
        return False

    # ---- Gymnasium API ---------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. ``options={"state": s}`` starts from ``s`` instead of a random state."""
        if seed is None:
            seed = self._initial_seed  # make(..., seed=s) seeds the first reset
        self._initial_seed = None
        super().reset(seed=seed)
        self._goal_state = None
        self._reset_sim(self.np_random)
        self._needs_reset = False
        if options and options.get("state") is not None:
            self.set_state(options["state"])
        return self._observation(), {"is_success": self._task_success()}

    def step(self, action: Any):
        """Apply ``action`` (see :meth:`check_action`); reward is 1.0 while the episode's task is solved, else 0.0."""
        if self._needs_reset:
            raise RuntimeError(f"call reset() before step() on the {self.name!r} environment")
        self._step_sim(self.check_action(action))
        success = self._task_success()
        return self._observation(), float(success), self._terminates(), False, {"is_success": success}

    # ---- goal-conditioned evaluation ------------------------------------------------------------------------------
    def set_goal_state(self, goal_state: Any) -> None:
        """The goal of the current episode (a ``get_state`` state; None: none), until the next ``reset``.

        Where stable-worldmodel judges success inside an action, the environment does so too: Reacher checks
        :meth:`is_success` against it after each physics sub-step of ``step`` and ends the action at the first that
        succeeds, returning ``terminated=True`` (``DMControlWrapper.step`` with ``_is_terminated``). The other
        environments judge success between actions, where the caller checks :meth:`is_success`, and keep it unused.
        """
        if goal_state is not None:
            goal_state = self._check_pair(goal_state, goal_state)[0].copy()
        self._goal_state = goal_state

    # ---- state interface -------------------------------------------------------------------------------------------
    def set_state(self, state: Any) -> None:
        """Restore a state returned by :meth:`get_state` (the rendered frame and later dynamics follow it)."""
        if self._needs_reset:
            self.reset()
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise ValueError(f"state for {self.name!r} must have shape ({self.state_dim},), got {state.shape}")
        if not np.isfinite(state).all():
            raise ValueError(f"state for {self.name!r} contains NaN or inf values")
        self._set_state(state)

    def check_action(self, action: Any) -> np.ndarray:
        """Validate an action, clipped to the action space if ``clip_actions``: float64 (action_dim,)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action for {self.name!r} must have shape ({self.action_dim},), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"action for {self.name!r} contains NaN or inf values")
        return np.clip(action, -1.0, 1.0) if self.clip_actions else action

    def _check_pair(self, state: Any, goal_state: Any) -> tuple[np.ndarray, np.ndarray]:
        state = np.asarray(state, dtype=np.float64)
        goal_state = np.asarray(goal_state, dtype=np.float64)
        for name, value in (("state", state), ("goal_state", goal_state)):
            if value.shape != (self.state_dim,):
                raise ValueError(f"{name} for {self.name!r} must have shape ({self.state_dim},), got {value.shape}")
        return state, goal_state

    def _observation(self) -> dict[str, np.ndarray]:
        return {"pixels": self.render(), "proprio": self.get_proprio(), "state": self.get_state()}
