"""Two-Room: a point agent in two rooms joined by a door (pure numpy, no simulator dependency).

Follows stable-worldmodel 0.1.1's ``swm/TwoRoom-v1`` (``stable_worldmodel/envs/two_room/env.py``) with its default
variation values. Everything is in pixels of its 224x224 frame (x to the right, y downwards; pixel i is centred at i):

- a 4-pixel black border line (pixels 10..13 and 210..213 on each axis); the agent's centre stays in [21, 203];
- a vertical wall at ``x = 112``, 10 pixels thick (collision within 5 of 112, drawn over pixels 107..117), with one door
  of half-height 14 centred at ``y = 49``;
- the agent is a red Gaussian dot (std 7, also its collision radius) on a white background; the target is not drawn;
- an action ``a`` in [-1, 1]^2 moves the agent by ``5 * a`` pixels. A move that ends in the wall's reach (within 12 of
  112) while the agent's centre is outside the door's span widened by 1.75 puts the agent back 0.5 pixel in front of
  the wall, on the side it started from.

Episodes end (``terminated``) when the agent comes within 16 pixels of its target, as stable-worldmodel's do.

Options (constructor keyword arguments, e.g. ``make("two_room", speed=7.0)``):

- ``speed`` (5.0): pixels per unit action, in stable-worldmodel's range [1.75, 10.5] (lewm_fast's earlier default: 7);
- ``door_y`` (49.0), ``door_half_width`` (14.0): the door's centre and half-height, in pixels;
- ``terminate_at_target`` (True): False keeps episodes running after the target is reached.

A reset samples the agent uniformly in [14, 209]^2 outside the wall's reach and the target uniformly in [14, 209]^2
(stable-worldmodel's position variations). State (float64, 4): agent x, y, then the episode's target x, y.
Proprio (float32, 2): agent x, y. Success: the agent within 16 pixels of the goal state's agent position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LeWMEnv, check_flag

# stable_worldmodel/envs/two_room/env.py (0.1.1) and its variation space's init values
FRAME = 224  # IMG_SIZE: the geometry is in pixels of this frame
BORDER = 14.0  # BORDER_SIZE
BORDER_LINE = 4.0  # _wall_and_door_masks: t = 4
RADIUS = 7.0  # agent.radius (the dot's std and the collision radius)
SPEED = 5.0  # agent.speed
SPEED_RANGE = (1.75, 10.5)  # agent.speed bounds
WALL_X = 112.0  # WALL_CENTER
WALL_HALF = 5.0  # wall.thickness 10 // 2
DOOR_Y = 49.0  # door.position
DOOR_HALF_WIDTH = 14.0  # door.size (half-extent)
DOOR_FIT = 1.1  # _check_door_fit: the door's half-extent is at least 1.1 agent radii
DOOR_MARGIN = 1.75  # _apply_collisions: door_margin
PUSHBACK = 0.5  # _apply_collisions: a blocked move stops this far in front of the wall's reach
SUCCESS_DISTANCE = 16.0  # step: terminated = distance to the target < 16
SPAWN = (BORDER, FRAME - BORDER - 1.0)  # agent.position / target.position bounds
AGENT_RGB = np.array([255, 0, 0], dtype=np.float32)
CLEAR = (BORDER + RADIUS, FRAME - BORDER - RADIUS)  # the agent's centre stays in this range on both axes
REACH = (WALL_X - WALL_HALF - RADIUS, WALL_X + WALL_HALF + RADIUS)  # x-range where the agent's disc meets the wall


class TwoRoomEnv(LeWMEnv):
    name = "two_room"
    action_dim = 2
    proprio_dim = 2
    state_dim = 4

    def __init__(
        self,
        image_size: int = 224,
        seed: int | None = None,
        speed: float = SPEED,
        door_y: float = DOOR_Y,
        door_half_width: float = DOOR_HALF_WIDTH,
        terminate_at_target: bool = True,
    ) -> None:
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise ValueError(f"speed must be in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}] pixels per unit action "
                             f"(stable-worldmodel's agent.speed range), got {speed}")
        if not DOOR_FIT * RADIUS <= door_half_width <= (FRAME - 2 * BORDER) / 2:
            raise ValueError(f"door_half_width must be in [{DOOR_FIT * RADIUS:.2f}, {(FRAME - 2 * BORDER) / 2}] "
                             f"pixels (the agent must fit through), got {door_half_width}")
        if not BORDER <= door_y <= FRAME - BORDER:
            raise ValueError(f"door_y must be in [{BORDER}, {FRAME - BORDER}] pixels, got {door_y}")
        self.speed = float(speed)
        self.door_y = float(door_y)
        self.door_half_width = float(door_half_width)
        self.terminate_at_target = check_flag(terminate_at_target, "terminate_at_target")
        super().__init__(image_size, seed)
        self._agent = np.zeros(2)
        self._target = np.zeros(2)
        self._grid = (np.arange(self.image_size, dtype=np.float32) + 0.5) * (FRAME / self.image_size) - 0.5
        self._background = self._draw_background()

    # ---- geometry --------------------------------------------------------------------------------------------------
    def in_door(self, y: float) -> bool:
        """Whether an agent centred at height ``y`` may cross the wall."""
        return abs(y - self.door_y) <= self.door_half_width + DOOR_MARGIN

    def sample_agent(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random start position outside the wall's reach."""
        while True:
            position = rng.uniform(*SPAWN, size=2)
            if not REACH[0] <= position[0] <= REACH[1]:
                return position

    def move(self, position: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Apply a displacement with border and wall collisions."""
        new = np.clip(position + delta, *CLEAR)
        if not self.in_door(new[1]):
            if position[0] < WALL_X and new[0] > REACH[0]:
                new[0] = REACH[0] - PUSHBACK
            elif position[0] >= WALL_X and new[0] < REACH[1]:
                new[0] = REACH[1] + PUSHBACK
        return new

    # ---- LeWMEnv hooks ---------------------------------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._agent = self.sample_agent(rng)
        self._target = rng.uniform(*SPAWN, size=2)

    def _step_sim(self, action: np.ndarray) -> None:
        self._agent = self.move(self._agent, action * self.speed)

    def get_state(self) -> np.ndarray:
        return np.concatenate([self._agent, self._target])

    def _set_state(self, state: np.ndarray) -> None:
        self._agent = state[:2].copy()
        self._target = state[2:].copy()

    def get_proprio(self) -> np.ndarray:
        return self._agent.astype(np.float32)

    def is_success(self, state: Any, goal_state: Any) -> bool:
        state, goal_state = self._check_pair(state, goal_state)
        return bool(np.linalg.norm(state[:2] - goal_state[:2]) < SUCCESS_DISTANCE)

    def _task_success(self) -> bool:
        return bool(np.linalg.norm(self._agent - self._target) < SUCCESS_DISTANCE)

    def _terminates(self) -> bool:
        return self.terminate_at_target and self._task_success()

    # ---- rendering -------------------------------------------------------------------------------------------------
    def _draw_background(self) -> np.ndarray:
        """Border lines and the wall with its door, sampled at the pixel centres of the 224 frame. As stable-worldmodel's
        ``_wall_and_door_masks`` draws them, the border lines are whole rows and columns and the wall covers every row
        outside the door: all of them run past the room to the frame's edges."""
        x, y = np.meshgrid(self._grid, self._grid)  # (n, n), row = y
        band = lambda c, lo: (c >= lo) & (c < lo + BORDER_LINE)  # noqa: E731
        border = (band(x, BORDER - BORDER_LINE) | band(x, FRAME - BORDER)
                  | band(y, BORDER - BORDER_LINE) | band(y, FRAME - BORDER))
        wall = (np.abs(x - WALL_X) <= WALL_HALF) & (np.abs(y - self.door_y) > self.door_half_width)
        image = np.full((self.image_size, self.image_size, 3), 255, dtype=np.uint8)
        image[border | wall] = 0
        return image

    def render(self) -> np.ndarray:
        """The agent's dot blended over the background as stable-worldmodel blends it: a Gaussian normalised to peak 1
        over the frame, float32, truncated to uint8."""
        dx = self._grid - np.float32(self._agent[0])
        dy = self._grid - np.float32(self._agent[1])
        dot = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / np.float32(2 * RADIUS**2))
        alpha = (dot / dot.max())[..., None]
        return (self._background * (1 - alpha) + AGENT_RGB * alpha).astype(np.uint8)


class TwoRoomExpert:
    """stable-worldmodel's Two-Room collection policy (``envs/two_room/expert_policy.py``): head for the door's centre
    while the target is in the other room and the door is more than 10.5 pixels away, otherwise for the target; the
    action is the unit direction plus Gaussian noise of std ``noise``, clipped to [-1, 1].

    ``noise=2.0`` is its data-collection setting (``scripts/data/collect_tworooms.py``); its ``action_repeat_prob=0.05``
    there has no effect in 0.1.1 (the policy never stores it), so it has no counterpart here.
    """

    DOOR_REACH = 10.5  # door_reach_tol default

    def __init__(self, env: Any, seed: int | None = None, noise: float = 2.0) -> None:
        self.env: TwoRoomEnv = env.unwrapped
        self.noise = float(noise)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def waypoint(self, position: np.ndarray, target: np.ndarray) -> np.ndarray:
        door = np.array([WALL_X, self.env.door_y])
        if (position[0] > WALL_X) != (target[0] > WALL_X) and np.linalg.norm(door - position) > self.DOOR_REACH:
            return door
        return target

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        direction = self.waypoint(state[:2], state[2:4]) - state[:2]
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 1e-8 else np.zeros(2)
        action = direction + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
