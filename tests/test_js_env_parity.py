"""The web page's Two-Room (lewm_fast/web/static/env.js, run by node) against lewm_fast.envs.two_room: the same action
sequences from the same states give identical positions and success, and the rendered frames match. The JS env gets
its constants from the same export code the page's manifest.json is written by. Without node the test is skipped,
except under CI (CI=true), where it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from lewm_fast.envs import make
from lewm_fast.envs.two_room import CLEAR, REACH, SPAWN, WALL_X, TwoRoomExpert
from lewm_fast.export.onnx import env_geometry
from lewm_fast.web.site import STATIC

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(not NODE and not IN_CI, reason="node is not installed (the JS env runs in node)")

DRIVER = """
import { readFileSync } from 'node:fs';
import { TwoRoom } from %s;
import { makeRng } from %s;
const cases = JSON.parse(readFileSync(process.argv[1], 'utf8'));
const env = new TwoRoom(cases.env);
const rollouts = cases.rollouts.map(({ start, goal, actions }) => {
  env.agent = start;
  return actions.map((a) => { env.step(a); return [...env.agent, env.isSuccess(goal) ? 1 : 0]; });
});
const frames = cases.frames.map(({ size, position }) => Array.from(env.render(size, position)));
const rng = makeRng(0);
const starts = Object.fromEntries(Object.entries(cases.starts).map(([name, range]) =>
  [name, Array.from({ length: cases.draws }, () => env.sampleAgent(rng, range ?? undefined))]));
process.stdout.write(JSON.stringify({ rollouts, frames, starts }));
"""


def run_js(cases: dict, tmp_path) -> dict:
    assert NODE, "node is required under CI (the JS env parity test)"
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    script = DRIVER % (json.dumps((STATIC / "env.js").as_uri()), json.dumps((STATIC / "cem.js").as_uri()))
    out = subprocess.run([NODE, "--input-type=module", "-e", script, str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scripted_cases(env) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(start, goal, actions): into the wall from both sides, through the door both ways, into the borders, actions
    outside [-1, 1], a random walk and the noisy expert crossing rooms."""
    right, left, up, down = [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]
    door = env.door_y
    cases = [
        ([60.0, 150.0], [150.0, 150.0], [right] * 12),  # into the wall from the left, outside the door
        ([170.0, 150.0], [60.0, 150.0], [left] * 12),  # and from the right
        ([60.0, door], [170.0, door], [right] * 25),  # through the door
        ([170.0, door + 10.0], [60.0, door], [left] * 25),  # back through it, near its edge
        ([95.0, door + 18.0], [150.0, door], [right, right, up, right, right, right]),  # at the door's margin
        ([30.0, 30.0], [25.0, 25.0], [[-1.0, -1.0]] * 5 + [[3.0, -2.5]] * 4),  # corner, unclipped actions
        ([180.0, 190.0], [200.0, 200.0], [down] * 6 + [right] * 6),
    ]
    rng = np.random.default_rng(0)
    walk_start = env.sample_agent(rng)
    cases.append((walk_start, rng.uniform(20, 200, 2), rng.uniform(-1.2, 1.2, (200, 2))))
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        expert, actions = TwoRoomExpert(env, seed=seed, noise=0.5), []
        start = env.unwrapped.get_state()
        for _ in range(80):
            actions.append(expert.act(obs).astype(np.float64))
            obs, *_ = env.step(actions[-1])
        cases.append((start[:2], start[2:], np.array(actions)))
    return [(np.asarray(s, float), np.asarray(g, float), np.asarray(a, float)) for s, g, a in cases]


def python_rollout(env, start: np.ndarray, goal: np.ndarray, actions: np.ndarray) -> np.ndarray:
    sim = env.unwrapped
    env.reset(seed=0)
    sim.set_state(np.concatenate([start, goal]))
    rows = []
    for a in actions:
        env.step(a)
        state = sim.get_state()
        rows.append([*state[:2], float(sim.is_success(state, np.concatenate([goal, goal])))])
    return np.array(rows)


def test_js_two_room_matches_python(tmp_path):
    env = make("two_room", image_size=64, terminate_at_target=False)
    cases = scripted_cases(env.unwrapped)
    positions = [(64, [60.0, 150.0]), (64, [111.3, 49.7]), (64, [21.0, 203.0]), (224, [150.25, 80.5]),
                 (224, [30.0, 30.0]), (28, [100.0, 120.0])]
    js = run_js({"env": env_geometry("two_room"),
                 "rollouts": [{"start": s.tolist(), "goal": g.tolist(), "actions": a.tolist()} for s, g, a in cases],
                 "frames": [{"size": size, "position": p} for size, p in positions],
                 "starts": {"env": None, "page": CLEAR}, "draws": 0}, tmp_path)
    crossed = 0
    for (start, goal, actions), got in zip(cases, js["rollouts"]):
        want = python_rollout(env, start, goal, actions)
        got = np.array(got, dtype=np.float64)
        np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got[:, 2], want[:, 2])
        crossed += bool(np.any(np.diff(np.sign(want[:, 0] - WALL_X)) != 0))
    assert crossed >= 2, "the cases should cross the wall through the door"
    for (size, position), got in zip(positions, js["frames"]):
        frame_env = make("two_room", image_size=size)
        frame_env.reset(seed=0)
        frame_env.unwrapped.set_state(np.array([*position, 0.0, 0.0]))
        want = frame_env.render().astype(np.int16).ravel()
        diff = np.abs(np.array(got, dtype=np.int16) - want)
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (size, position, diff.max(), (diff == 0).mean())


def test_random_starts(tmp_path):
    """The JS env's default start range is the Python env's (stable-worldmodel's SPAWN, which reaches onto the border
    line: the Python env's first step moves such an agent in); the page's starts (range CLEAR) lie where the Python env
    leaves a resting agent in place, inside the borders and outside the wall's reach."""
    env = make("two_room", image_size=64).unwrapped
    js = run_js({"env": env_geometry("two_room"), "rollouts": [], "frames": [], "starts": {"env": None, "page": CLEAR},
                 "draws": 2000}, tmp_path)
    spawned, page = np.array(js["starts"]["env"]), np.array(js["starts"]["page"])
    python = np.array([env.sample_agent(np.random.default_rng(seed)) for seed in range(2000)])
    for starts in (spawned, python):
        assert starts.min() >= SPAWN[0] and starts.max() <= SPAWN[1]
        assert not np.any((REACH[0] <= starts[:, 0]) & (starts[:, 0] <= REACH[1]))
        on_border = (starts < CLEAR[0]) | (starts > CLEAR[1])
        assert on_border.any(), "SPAWN reaches beyond CLEAR: some starts lie on the border line"
        moved = [not np.array_equal(env.move(p, np.zeros(2)), p) for p in starts[on_border.any(axis=1)]]
        assert all(moved)
    assert page.min() >= CLEAR[0] and page.max() <= CLEAR[1]
    assert not np.any((REACH[0] <= page[:, 0]) & (page[:, 0] <= REACH[1]))
    assert all(np.array_equal(env.move(p, np.zeros(2)), p) for p in page)
