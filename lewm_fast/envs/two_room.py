"""Two-Room: a point agent in two rooms joined by a narrow door (pure numpy, no simulator dependency).

Geometry follows the 64-pixel reference layout of the LeWM / stable-worldmodel Two-Room task, in units of the arena
side (the arena is the unit square, x to the right, y downwards as in the image):

- a border line ``4/64`` in from each edge; the agent's centre stays ``radius`` inside it;
- a vertical wall at ``x = 0.5``, ``3/64`` thick, with one door of half-width ``4/64`` centred at ``y = 14/64``;
- the agent is a red Gaussian dot (std ``2/64``, also its collision radius) on a white background, walls are black;
- an action ``a`` in [-1, 1]^2 moves the agent by ``a * 2/64``; moves into a wall stop at the wall face.

State (float64, 4): agent x, y, then the episode's target x, y (sampled in the other room; not drawn).
Proprio (float32, 2): agent x, y. Success: agent within ``4.5/64`` of the goal state's agent position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LeWMEnv

UNIT = 1.0 / 64.0
BORDER = 4 * UNIT
RADIUS = 2 * UNIT
SPEED = 2 * UNIT
WALL_X = 0.5
WALL_HALF = 1.5 * UNIT
BORDER_LINE = 1 * UNIT
SUCCESS_DISTANCE = 4.5 * UNIT
AGENT_RGB = np.array([255, 0, 0], dtype=np.float32)


class TwoRoomEnv(LeWMEnv):
    name = "two_room"
    action_dim = 2
    proprio_dim = 2
    state_dim = 4

    def __init__(
        self,
        image_size: int = 224,
        seed: int | None = None,
        door_y: float = 14 * UNIT,
        door_half_width: float = 4 * UNIT,
    ) -> None:
        lo, hi = BORDER + RADIUS, 1.0 - BORDER - RADIUS
        if not lo + door_half_width <= door_y <= hi - door_half_width:
            raise ValueError(f"door_y must leave the door inside the arena [{lo + door_half_width:.3f}, "
                             f"{hi - door_half_width:.3f}], got {door_y}")
        if not RADIUS <= door_half_width <= 0.25:
            raise ValueError(f"door_half_width must be in [{RADIUS:.4f}, 0.25] (wider than the agent), "
                             f"got {door_half_width}")
        self.door_y = float(door_y)
        self.door_half_width = float(door_half_width)
        super().__init__(image_size, seed)
        self._agent = np.zeros(2)
        self._target = np.zeros(2)
        self._background = self._draw_background()

    # ---- geometry --------------------------------------------------------------------------------------------------
    @property
    def slab(self) -> tuple[float, float]:
        """x-range the agent's centre cannot enter except through the door."""
        return WALL_X - WALL_HALF - RADIUS, WALL_X + WALL_HALF + RADIUS

    def in_door(self, y: float) -> bool:
        return abs(y - self.door_y) <= self.door_half_width

    def sample_position(self, rng: np.random.Generator, left: bool | None = None) -> np.ndarray:
        """A uniformly random free position, in the left room, right room, or either (``left=None``)."""
        if left is None:
            left = bool(rng.random() < 0.5)
        slab_lo, slab_hi = self.slab
        x_lo, x_hi = (BORDER + RADIUS, slab_lo) if left else (slab_hi, 1.0 - BORDER - RADIUS)
        return np.array([rng.uniform(x_lo, x_hi), rng.uniform(BORDER + RADIUS, 1.0 - BORDER - RADIUS)])

    def move(self, position: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Apply a displacement with border and wall collisions."""
        lo, hi = BORDER + RADIUS, 1.0 - BORDER - RADIUS
        new = np.clip(position + delta, lo, hi)
        slab_lo, slab_hi = self.slab
        if slab_lo < new[0] < slab_hi and not self.in_door(new[1]):
            if position[0] <= slab_lo:
                new[0] = slab_lo
            elif position[0] >= slab_hi:
                new[0] = slab_hi
            else:  # inside the door corridor: its side walls stop vertical motion
                new[1] = np.clip(new[1], self.door_y - self.door_half_width, self.door_y + self.door_half_width)
        return new

    # ---- LeWMEnv hooks ---------------------------------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        left = bool(rng.random() < 0.5)
        self._agent = self.sample_position(rng, left)
        self._target = self.sample_position(rng, not left)

    def _step_sim(self, action: np.ndarray) -> None:
        self._agent = self.move(self._agent, action * SPEED)

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

    # ---- rendering -------------------------------------------------------------------------------------------------
    def _draw_background(self) -> np.ndarray:
        n = self.image_size
        centres = (np.arange(n) + 0.5) / n
        x, y = np.meshgrid(centres, centres)  # (n, n), row = y
        line = lambda c, lo, hi: (c >= lo) & (c < hi)  # noqa: E731
        border = (
            line(x, BORDER - BORDER_LINE, BORDER) | line(x, 1 - BORDER, 1 - BORDER + BORDER_LINE)
            | line(y, BORDER - BORDER_LINE, BORDER) | line(y, 1 - BORDER, 1 - BORDER + BORDER_LINE)
        )
        wall = line(x, WALL_X - WALL_HALF, WALL_X + WALL_HALF) & ~(np.abs(y - self.door_y) <= self.door_half_width)
        image = np.full((n, n, 3), 255, dtype=np.uint8)
        image[border | wall] = 0
        return image

    def render(self) -> np.ndarray:
        n = self.image_size
        image = self._background.copy()
        sigma = RADIUS * n
        cx, cy = self._agent * n - 0.5  # pixel-index coordinates of the centre
        r = int(np.ceil(4 * sigma))
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 2, n)
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 2, n)
        xs = np.arange(x0, x1) - cx
        ys = np.arange(y0, y1) - cy
        alpha = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))[..., None]
        patch = image[y0:y1, x0:x1].astype(np.float32)
        image[y0:y1, x0:x1] = np.rint(patch * (1 - alpha) + AGENT_RGB * alpha).astype(np.uint8)
        return image


class TwoRoomExpert:
    """Waypoint controller: to the door on the agent's side, through it, then to the target; Gaussian action noise.

    It first heads to the episode's target (``state[2:4]``) and, once there, to fresh random targets in either room.
    """

    def __init__(self, env: Any, seed: int | None = None, noise: float = 0.3) -> None:
        self.env: TwoRoomEnv = env.unwrapped
        self.noise = float(noise)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self._goal: np.ndarray | None = None

    def waypoint(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        env = self.env
        if (position[0] < WALL_X) == (goal[0] < WALL_X):
            return goal
        side = -1.0 if position[0] < WALL_X else 1.0
        offset = WALL_HALF + RADIUS + 2 * UNIT
        if abs(position[1] - env.door_y) <= 0.5 * env.door_half_width:
            return np.array([WALL_X - side * offset, env.door_y])  # aligned: cross to the other side
        return np.array([WALL_X + side * offset, env.door_y])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        position = state[:2]
        if self._goal is None:
            self._goal = state[2:4].copy()
        if np.linalg.norm(position - self._goal) < SUCCESS_DISTANCE:
            self._goal = self.env.sample_position(self.rng)
        direction = (self.waypoint(position, self._goal) - position) / SPEED
        action = np.clip(direction, -1.0, 1.0) + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
