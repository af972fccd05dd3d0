"""PushT: a circular pusher moves a T-shaped block onto a fixed target pose (pymunk physics, PIL rendering).

Follows stable-worldmodel 0.1.1's ``swm/PushT-v1`` (``stable_worldmodel/envs/pusht/env.py``, itself the PushT task of
Diffusion Policy / DINO-WM): a 512x512 arena walled by four segments, no gravity, a kinematic pusher of radius 15
driven by a PD controller (k_p 100, k_v 20, ten 0.01 s physics steps per action), and a T block made of a 120x30 bar
and a 30x90 stem. Space damping is 0, so the block only moves while it is pushed. Actions are relative: ``a`` sets the
PD target to ``pusher + 100 * a``, neither clipped (as in stable-worldmodel).

Options (constructor keyword arguments, e.g. ``make("pusht", physical_inertia=True)``):

- ``physical_inertia`` (False): the block's moment of inertia. By default 3000, stable-worldmodel's (and gym-pusht's)
  value, which counts the bar twice; True gives the T's true moment, 7875 (bar + stem). The dynamics differ: under the
  same pushes the block drifts several pixels apart within 25 steps.
- ``clip_action`` (False): clip the action to [-1, 1] and the PD target to [20, 492] (lewm_fast's earlier handling).
- ``goal_pose``: the target pose (x, y, angle) drawn under the block, by default (256, 256, pi/4).

A reset places the block uniformly in [100, 400]^2 at a uniform angle and the pusher uniformly in [50, 450]^2, as
stable-worldmodel does, but clear of the block (there it may start inside it and shove it).

State (float64, 7): pusher x, y, block x, y, block angle in [0, 2pi), pusher vx, vy (pixels of the 512 arena; block x, y
is the body origin, the top centre of the bar). Proprio (float32, 4): pusher x, y, vx, vy.
Success (stable-worldmodel's ``eval_state``): ``||(pusher, block)_xy - goal_(pusher, block)_xy|| < 20`` and block angle
within ``pi/9`` of the goal's. Frames are drawn as stable-worldmodel draws them: the target pose in light green, the
walls, the pusher (with a lighter core) and the block (lighter fill, 4-pixel outline) on a 512 canvas, resized
bilinearly to ``image_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LeWMEnv, check_flag, require, wrap_angle

# stable_worldmodel/envs/pusht/env.py (0.1.1)
ARENA = 512.0  # window_size
PUSHER_RADIUS = 15.0  # add_circle: base_radius 0.375 x agent scale 40
ACTION_SCALE = 100.0  # action_scale
KP, KV = 100.0, 20.0  # k_p, k_v
PHYSICS_DT = 0.01  # dt
SUBSTEPS = 10  # int(1 / (dt * control_hz)), control_hz = render_fps = 10
BAR = ((-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0))  # add_tee, scale 30, length 4: vertices1
STEM = ((-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0))  # vertices2
COG_LOCAL = np.array([0.0, 45.0])  # add_tee: the mean of the bar's and the stem's centroids
# _setup: the four wall segments (ends, in its order: the order of the contacts with several walls depends on it)
WALLS = (((5.0, 506.0), (5.0, 5.0)), ((5.0, 5.0), (506.0, 5.0)), ((506.0, 5.0), (506.0, 506.0)),
         ((5.0, 506.0), (506.0, 506.0)))
WALL_RADIUS = 2.0
GOAL_POSE = (256.0, 256.0, np.pi / 4)  # variation_space goal.position / goal.angle
SUCCESS_DISTANCE = 20.0  # eval_state
SUCCESS_ANGLE = np.pi / 9
BACKGROUND_RGB = (255, 255, 255)
GOAL_RGB = (144, 238, 144)  # LightGreen
BLOCK_RGB = (119, 136, 153)  # LightSlateGray
PUSHER_RGB = (65, 105, 225)  # RoyalBlue
WALL_RGB = (211, 211, 211)  # LightGray (_add_segment)
# stable_worldmodel/envs/utils.py DrawOptions: a polygon is filled with light_color (1.2x, capped at 255) and outlined
# by 2-pixel-radius segments in its colour; a circle gets a light_color core 4 pixels smaller.
LIGHTEN = 1.2
OUTLINE_RADIUS = 2.0
CORE_INSET = 4.0
# lewm_fast's earlier action handling (clip_action=True): the PD target stays 5 pixels clear of the walls' inner face.
TARGET_MARGIN = PUSHER_RADIUS + 5.0


def _pymunk():
    return require("pymunk", "pusht")


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def tee_polygons(x: float, y: float, angle: float) -> list[np.ndarray]:
    """World-frame vertices (4, 2) of the bar and the stem of a T at pose (x, y, angle)."""
    rot = rotation(angle)
    return [np.asarray(part) @ rot.T + np.array([x, y]) for part in (BAR, STEM)]


def tee_inertia(pymunk: Any, physical: bool) -> float:
    """Moment of inertia of the unit-mass T about its body origin: stable-worldmodel's ``add_tee`` (like gym-pusht)
    computes the stem's term from the bar's vertices, 2 x 1500 = 3000; ``physical``: bar + stem, 1500 + 6375 = 7875."""
    bar = pymunk.moment_for_poly(1.0, BAR)
    return bar + (pymunk.moment_for_poly(1.0, STEM) if physical else bar)


def make_tee_body(pymunk: Any, physical_inertia: bool = False) -> tuple[Any, list[Any]]:
    """A dynamic T body (mass 1) with its two polygon shapes."""
    body = pymunk.Body(1.0, tee_inertia(pymunk, physical_inertia))
    shapes = [pymunk.Poly(body, part) for part in (BAR, STEM)]
    body.center_of_gravity = tuple(COG_LOCAL)
    return body, shapes


def lighten(rgb: tuple[int, int, int]) -> tuple[int, ...]:
    """stable-worldmodel's ``light_color``: 1.2 x each channel in float32, capped at 255, truncated."""
    return tuple(int(c) for c in np.minimum(np.float32(LIGHTEN) * np.float32(rgb), np.float32(255)))


def resize_bilinear(canvas: Any, size: int) -> np.ndarray:
    """A square PIL image resized the way OpenCV's INTER_LINEAR resizes (stable-worldmodel's ``cv2.resize``), as uint8
    (size, size, 3): each output pixel interpolates the 2x2 source pixels around its centre, with no prefiltering
    (PIL's affine transform samples exactly there; values agree with OpenCV's to within 1)."""
    from PIL import Image

    scale = canvas.width / size
    if canvas.width != size:
        canvas = canvas.transform((size, size), Image.AFFINE, (scale, 0, 0, 0, scale, 0), resample=Image.BILINEAR)
    return np.asarray(canvas, dtype=np.uint8)


class PushTEnv(LeWMEnv):
    name = "pusht"
    action_dim = 2
    proprio_dim = 4
    state_dim = 7

    def __init__(
        self,
        image_size: int = 224,
        seed: int | None = None,
        goal_pose: tuple = GOAL_POSE,
        physical_inertia: bool = False,
        clip_action: bool = False,
    ) -> None:
        self.pymunk = _pymunk()
        goal = np.asarray(goal_pose, dtype=np.float64)
        if goal.shape != (3,) or not np.isfinite(goal).all():
            raise ValueError(f"goal_pose must be a finite (x, y, angle) triple, got {goal_pose!r}")
        self.goal_pose = goal
        self.physical_inertia = check_flag(physical_inertia, "physical_inertia")
        self.clip_actions = check_flag(clip_action, "clip_action")
        super().__init__(image_size, seed)
        self._build_space()

    # ---- physics ---------------------------------------------------------------------------------------------------
    def _build_space(self) -> None:
        """A fresh space (no cached contacts), so a state set with set_state evolves like a freshly reset one."""
        pm = self.pymunk
        self.space = pm.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0
        walls = [pm.Segment(self.space.static_body, a, b, WALL_RADIUS) for a, b in WALLS]
        self.pusher = pm.Body(body_type=pm.Body.KINEMATIC)
        pusher_shape = pm.Circle(self.pusher, PUSHER_RADIUS)
        pusher_shape.friction = 1.0
        self.block, self.block_shapes = make_tee_body(pm, self.physical_inertia)
        self.space.add(*walls, self.pusher, pusher_shape, self.block, *self.block_shapes)

    def _place(self, pusher: np.ndarray, block: np.ndarray, angle: float, velocity: np.ndarray) -> None:
        self._build_space()
        self.pusher.position = tuple(pusher)
        self.pusher.velocity = tuple(velocity)
        self.block.angle = float(angle)  # angle first: setting it keeps the centre of gravity fixed, not the origin
        self.block.position = tuple(block)
        self.space.reindex_shapes_for_body(self.block)
        self.space.reindex_shapes_for_body(self.pusher)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        block = rng.uniform(100.0, 400.0, size=2)
        self._place(np.zeros(2), block, rng.uniform(-np.pi, np.pi), np.zeros(2))
        for shape in self.block_shapes:
            shape.cache_bb()
        while True:  # a pusher position clear of the block
            pusher = rng.uniform(50.0, 450.0, size=2)
            if min(s.point_query(tuple(pusher)).distance for s in self.block_shapes) > PUSHER_RADIUS + 5.0:
                break
        self.pusher.position = tuple(pusher)
        self.space.reindex_shapes_for_body(self.pusher)

    def _step_sim(self, action: np.ndarray) -> None:
        target = np.asarray(self.pusher.position) + ACTION_SCALE * action
        if self.clip_actions:
            target = np.clip(target, TARGET_MARGIN, ARENA - TARGET_MARGIN)
        for _ in range(SUBSTEPS):
            position = np.asarray(self.pusher.position)
            velocity = np.asarray(self.pusher.velocity)
            self.pusher.velocity = tuple(velocity + (KP * (target - position) - KV * velocity) * PHYSICS_DT)
            self.space.step(PHYSICS_DT)

    # ---- state interface -------------------------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.array([
            *self.pusher.position, *self.block.position, self.block.angle % (2 * np.pi), *self.pusher.velocity,
        ], dtype=np.float64)

    def _set_state(self, state: np.ndarray) -> None:
        self._place(state[0:2], state[2:4], state[4], state[5:7])

    def get_proprio(self) -> np.ndarray:
        return np.array([*self.pusher.position, *self.pusher.velocity], dtype=np.float32)

    def is_success(self, state: Any, goal_state: Any) -> bool:
        state, goal_state = self._check_pair(state, goal_state)
        position_error = np.linalg.norm(state[:4] - goal_state[:4])
        angle_error = abs(wrap_angle(state[4] - goal_state[4]))
        return bool(position_error < SUCCESS_DISTANCE and angle_error < SUCCESS_ANGLE)

    def _task_success(self) -> bool:
        """The block (the pusher is free) at the target pose."""
        at_goal = np.linalg.norm(np.asarray(self.block.position) - self.goal_pose[:2]) < SUCCESS_DISTANCE
        return bool(at_goal and abs(wrap_angle(self.block.angle - self.goal_pose[2])) < SUCCESS_ANGLE)

    # ---- rendering -------------------------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        from PIL import Image, ImageDraw

        canvas = Image.new("RGB", (int(ARENA), int(ARENA)), BACKGROUND_RGB)
        draw = ImageDraw.Draw(canvas)

        def fat_segments(points: list[tuple[int, int]], colour: tuple[int, ...]) -> None:
            draw.line(points, fill=colour, width=int(2 * OUTLINE_RADIUS))
            r = OUTLINE_RADIUS
            for x, y in points:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)

        for polygon in tee_polygons(*self.goal_pose):
            draw.polygon([tuple(p) for p in np.rint(polygon)], fill=GOAL_RGB)
        for wall in WALLS:
            fat_segments(list(wall), WALL_RGB)
        cx, cy = np.rint(np.asarray(self.pusher.position))
        for radius, colour in ((PUSHER_RADIUS, PUSHER_RGB), (PUSHER_RADIUS - CORE_INSET, lighten(PUSHER_RGB))):
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        for polygon in tee_polygons(*self.block.position, self.block.angle):
            points = [tuple(p) for p in np.rint(polygon).astype(int)]
            draw.polygon(points, fill=lighten(BLOCK_RGB))
            fat_segments(points + points[:1], BLOCK_RGB)
        return resize_bilinear(canvas, self.image_size)


class PushTExpert:
    """Scripted pusher: gets behind the block relative to the target and pushes it there, then turns it.

    Far from the target it pushes through the block's centre of mass toward the target's, off-centre in proportion to
    the angle error so the push also turns the block; near the target it pushes the end of the bar sideways. It walks
    around the block when the block is in the way. Gaussian noise is added to every action. (stable-worldmodel's LeWM
    PushT data are DINO-WM's expert demonstrations; this scripted expert stands in for them.)
    """

    def __init__(self, env: Any, seed: int | None = None, noise: float = 0.1) -> None:
        self.env: PushTEnv = env.unwrapped
        self.noise = float(noise)
        self._body, self._shapes = make_tee_body(self.env.pymunk)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def _pose_block(self, x: float, y: float, angle: float) -> None:
        self._body.angle = angle
        self._body.position = (x, y)
        for shape in self._shapes:
            shape.cache_bb()

    def _first_hit(self, start: np.ndarray, end: np.ndarray) -> float | None:
        """Fraction along start->end where a pusher-sized disk first touches the block, or None."""
        alphas = []
        for shape in self._shapes:
            hit = shape.segment_query(tuple(start), tuple(end), PUSHER_RADIUS)
            if hit is not None and hit.shape is not None:
                alphas.append(hit.alpha)
        return min(alphas) if alphas else None

    def _push_plan(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(aim point on the block, unit push direction), or None when the block is at the target pose."""
        x, y, angle = state[2], state[3], state[4]
        goal = self.env.goal_pose
        com = np.array([x, y]) + rotation(angle) @ COG_LOCAL
        goal_com = goal[:2] + rotation(goal[2]) @ COG_LOCAL
        error = goal_com - com
        angle_error = float(wrap_angle(goal[2] - angle))
        if np.linalg.norm(error) > 0.5 * SUCCESS_DISTANCE:
            direction = error / np.linalg.norm(error)
            normal = np.array([-direction[1], direction[0]])
            return com - normal * 30.0 * np.clip(angle_error, -1.0, 1.0), direction
        if abs(angle_error) > 0.5 * SUCCESS_ANGLE:
            ends = [np.array([x, y]) + rotation(angle) @ np.array([side * 50.0, 15.0]) for side in (-1.0, 1.0)]
            end = min(ends, key=lambda p: np.linalg.norm(p - state[:2]))
            lever = end - com
            direction = np.sign(angle_error) * np.array([-lever[1], lever[0]]) / np.linalg.norm(lever)
            return end, direction
        return None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        pusher = state[:2]
        self._pose_block(state[2], state[3], state[4])
        plan = self._push_plan(state)
        if plan is None:
            target = pusher
        else:
            aim, direction = plan
            start = aim - direction * 300.0
            alpha = self._first_hit(start, aim)
            contact = start + (aim - start) * (alpha if alpha is not None else 1.0)
            ready = contact - direction * 8.0
            offset = pusher - aim
            behind = offset @ direction < 0 and abs(offset @ np.array([-direction[1], direction[0]])) < 10.0
            if behind and np.linalg.norm(pusher - ready) < 40.0 or np.linalg.norm(pusher - ready) < 10.0:
                target = pusher + direction * 60.0
            elif self._first_hit(pusher, ready) is None:
                target = ready
            else:  # the block is in the way: orbit around its centre toward the ready point
                centre = np.array([state[2], state[3]]) + rotation(state[4]) @ COG_LOCAL
                here, there = pusher - centre, ready - centre
                turn = np.sign(here[0] * there[1] - here[1] * there[0]) or 1.0
                target = centre + rotation(turn * np.pi / 4) @ (here / np.linalg.norm(here)) * 110.0
        action = np.clip((target - pusher) / ACTION_SCALE, -1.0, 1.0) + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
