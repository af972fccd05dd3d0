"""Generate ``tests/data/swm_reference.npz``: PushT and Two-Room trajectories and frames recorded with stable-worldmodel
0.1.1's own environments, which ``tests/test_env_protocol.py`` replays in lewm_fast's.

Not run by the test suite. Run it once, from the repository root, in a scratch environment that has stable-worldmodel
(lewm_fast is not needed):

    python3 -m venv /tmp/swmref
    /tmp/swmref/bin/pip install --no-deps stable-worldmodel==0.1.1
    /tmp/swmref/bin/pip install numpy==2.4.6 gymnasium==1.4.0 pymunk==7.3.1 pygame opencv-python-headless shapely \\
        loguru torch==2.13.0
    /tmp/swmref/bin/python tests/data/make_swm_reference.py

stable-worldmodel's package ``__init__`` imports its whole stack (lance, torchvision, ...); its PushT and Two-Room modules
need only the packages above, so this script imports them with those ``__init__`` files skipped.

Scenarios (each starts from a fixed state; the actions are chosen in closed loop here and stored, the test replays them
open loop): PushT pushes the block through its centre with actions up to 1.5 in size (no clipping), turns it with an
off-centre push, squeezes it against the right wall, and pokes it with random actions near the block; Two-Room runs
into the wall, slides to the door, crosses it and reaches the target, leaves the door vertically from inside the wall,
rubs along the border with actions beyond [-1, 1], and walks randomly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "swm_reference.npz"
PUSHT_STEPS = 50
TWO_ROOM_STEPS = 60
# (scenario, steps taken) of the 224x224 frames stored: a few, to keep the file small
PUSHT_FRAMES = ((0, 0), (2, PUSHT_STEPS))
TWO_ROOM_FRAMES = ((0, 0), (1, 30))


def import_swm_envs() -> tuple[type, type]:
    """stable-worldmodel's PushT and TwoRoomEnv classes, imported without running its package __init__ files."""
    root = Path(importlib.util.find_spec("stable_worldmodel").submodule_search_locations[0])
    for sub in ("", ".envs", ".envs.pusht", ".envs.two_room"):
        stub = types.ModuleType(f"stable_worldmodel{sub}")
        stub.__path__ = [str(root.joinpath(*sub.split(".")[1:]))]
        sys.modules[f"stable_worldmodel{sub}"] = stub
    package = sys.modules["stable_worldmodel"]
    package.utils = importlib.import_module("stable_worldmodel.utils")
    package.spaces = importlib.import_module("stable_worldmodel.spaces")
    pusht = importlib.import_module("stable_worldmodel.envs.pusht.env")
    two_room = importlib.import_module("stable_worldmodel.envs.two_room.env")
    return pusht.PushT, two_room.TwoRoomEnv


def block_centre(state: np.ndarray) -> np.ndarray:
    c, s = np.cos(state[4]), np.sin(state[4])
    return state[2:4] + np.array([[c, -s], [s, c]]) @ np.array([0.0, 45.0])


def pusht_scenarios() -> list[tuple[np.ndarray, object]]:
    """(start state, action rule(state, t, rng)) for each PushT scenario."""
    def through_centre(state, t, rng):  # aim past the block's centre, actions up to 1.5
        aim = block_centre(state) + np.array([60.0, 10.0])
        return np.clip((aim - state[:2]) / 40.0, -1.5, 1.5)

    def off_centre(state, t, rng):  # push the bar's end, above the centre of mass: the block turns
        return np.array([-0.25, 0.0]) if t < 25 else np.array([0.0, -0.3])

    def into_wall(state, t, rng):  # push the stem to the right until the bar meets the wall, and keep pressing
        return np.array([0.4, 0.02 * np.sin(t)])

    def random_near_block(state, t, rng):  # uniform actions, their target kept within 60 pixels of the block
        target = np.clip(state[:2] + 100.0 * rng.uniform(-1, 1, 2), state[2:4] - 60.0, state[2:4] + 60.0)
        return (target - state[:2]) / 100.0

    return [
        (np.array([150.0, 260.0, 256.0, 300.0, 0.3, 0.0, 0.0]), through_centre),
        (np.array([400.0, 271.0, 256.0, 256.0, 0.0, 0.0, 0.0]), off_centre),
        (np.array([300.0, 320.0, 420.0, 256.0, 0.0, 0.0, 0.0]), into_wall),
        (np.array([260.0, 340.0, 200.0, 200.0, 2.0, 0.0, 0.0]), random_near_block),
    ]


def two_room_scenarios() -> list[tuple[np.ndarray, object]]:
    """(agent x, y, target x, y, action rule(position, t, rng)) for each Two-Room scenario."""
    def through_door(position, t, rng):  # right into the wall, up to the door, through it, then to the target
        if t < 10:
            return np.array([1.0, 0.0])
        if position[0] < 112 and position[1] > 52:
            return np.array([0.3, -1.0])
        return np.clip((np.array([170.0, 150.0]) - position) / 5.0, -1, 1) if position[0] > 118 else np.array([1.0, 0.0])

    def out_of_door(position, t, rng):  # into the door, then down out of its span from inside the wall
        if t < 4:
            return np.array([1.0, 0.0])
        if t < 16:
            return np.array([0.0, 1.0])
        return np.array([-1.7, -1.3]) if t < 40 else np.array([1.2, 2.0])

    def random_walk(position, t, rng):
        return rng.uniform(-1.5, 1.5, 2)

    return [
        (np.array([60.0, 150.0, 170.0, 150.0]), through_door),
        (np.array([98.0, 49.0, 30.0, 200.0]), out_of_door),
        (np.array([180.0, 40.0, 40.0, 190.0]), random_walk),
    ]


def main() -> None:
    push_t, two_room = import_swm_envs()
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}

    actions, states, frames = [], [], {}
    env = push_t()
    for k, (start, rule) in enumerate(pusht_scenarios()):
        obs, _ = env.reset(seed=0, options={"state": start, "goal_state": start})
        trajectory, applied = [obs["state"].copy()], []
        for t in range(PUSHT_STEPS + 1):
            if (k, t) in PUSHT_FRAMES:
                frames[k, t] = env.render()
            if t == PUSHT_STEPS:
                break
            action = np.asarray(rule(trajectory[-1], t, rng), dtype=np.float64)
            obs, *_ = env.step(action)
            applied.append(action)
            trajectory.append(obs["state"].copy())
        actions.append(applied)
        states.append(trajectory)
    out.update(pusht_actions=np.array(actions), pusht_states=np.array(states), pusht_frame_at=np.array(PUSHT_FRAMES),
               pusht_frames=np.stack([frames[key] for key in PUSHT_FRAMES]))

    starts, actions, positions, terminated, frames = [], [], [], [], {}
    env = two_room()
    for k, (start, rule) in enumerate(two_room_scenarios()):
        env.reset(seed=0, options={"state": start[:2], "target_state": start[2:]})
        trajectory, applied, ended = [env.agent_position.numpy().astype(np.float64)], [], []
        for t in range(TWO_ROOM_STEPS + 1):
            if (k, t) in TWO_ROOM_FRAMES:
                frames[k, t] = env.render()
            if t == TWO_ROOM_STEPS:
                break
            action = np.asarray(rule(trajectory[-1], t, rng), dtype=np.float32)
            _, _, done, _, _ = env.step(action)
            applied.append(action)
            trajectory.append(env.agent_position.numpy().astype(np.float64))
            ended.append(done)
        starts.append(start)
        actions.append(applied)
        positions.append(trajectory)
        terminated.append(ended)
    out.update(two_room_start=np.stack(starts), two_room_actions=np.array(actions),
               two_room_positions=np.array(positions), two_room_terminated=np.array(terminated),
               two_room_frame_at=np.array(TWO_ROOM_FRAMES),
               two_room_frames=np.stack([frames[key] for key in TWO_ROOM_FRAMES]))

    versions = {name: importlib.metadata.version(name) for name in ("stable-worldmodel", "pymunk", "numpy", "torch")}
    out["meta"] = np.array(json.dumps({"generator": "tests/data/make_swm_reference.py", "versions": versions}))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB): " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
