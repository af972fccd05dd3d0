"""The four LeWM environments and their data-collection policies.

Simulator-backed environments (pusht: pymunk, reacher: dm_control, cube: ogbench) are skipped when their package is
missing, except under CI (CI=true), where a missing simulator fails the test instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import lewm_fast.envs as envs
from lewm_fast.envs import ENV_NAMES, POLICY_KINDS, make, make_policy

IMAGE = 64
ACTION_DIMS = {"two_room": 2, "pusht": 2, "reacher": 2, "cube": 5}
SIMULATOR = {"two_room": None, "pusht": "pymunk", "reacher": "dm_control", "cube": "ogbench"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Cube renders without shadows and reflections here (several times faster on CPU); its default rendering is covered by
# test_image_size_is_configurable.
FAST = {"cube": {"fast_render": True}}


def _available(name: str) -> bool:
    module = SIMULATOR[name]
    return module is None or importlib.util.find_spec(module) is not None


ENV_PARAMS = [
    pytest.param(name, marks=pytest.mark.skipif(
        not IN_CI and not _available(name), reason=f"{SIMULATOR[name]} not installed (lewm-fast[envs] extra)"))
    for name in ENV_NAMES
]


@pytest.fixture(scope="module", params=ENV_PARAMS)
def env(request):
    e = make(request.param, image_size=IMAGE, seed=0, **FAST.get(request.param, {}))
    yield e
    e.close()


def _actions(name: str, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(steps, ACTION_DIMS[name])).astype(np.float32)


def _rollout(e, seed: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = e.reset(seed=seed)
    states, frames = [obs["state"]], [obs["pixels"]]
    for a in actions:
        obs, reward, terminated, truncated, info = e.step(a)
        assert not truncated and isinstance(info["is_success"], bool)
        assert terminated == (e.unwrapped.name == "two_room" and info["is_success"])  # Two-Room ends at its target
        states.append(obs["state"])
        frames.append(obs["pixels"])
    return np.stack(states), np.stack(frames)


def test_registry_and_bad_arguments():
    assert ENV_NAMES == ("two_room", "pusht", "reacher", "cube")
    with pytest.raises(ValueError, match="unknown environment 'maze'.*two_room, pusht, reacher, cube"):
        make("maze")
    with pytest.raises(ValueError, match="image_size"):
        make("two_room", image_size=0)
    with pytest.raises(TypeError, match="image_size"):
        make("two_room", image_size="64")
    with pytest.raises(ValueError, match="door_half_width"):
        make("two_room", door_half_width=0.001)


def test_spaces(env):
    name = env.unwrapped.name
    assert env.unwrapped is env
    assert env.action_space.shape == (ACTION_DIMS[name],)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["proprio"].dtype == np.float32 and obs["state"].dtype == np.float64
    assert obs["state"].shape == env.get_state().shape == (env.state_dim,)


def test_render_shape_and_dtype(env):
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (IMAGE, IMAGE, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, obs["pixels"])
    assert frame.std() > 5  # a scene, not a blank frame


@pytest.mark.parametrize("name", ENV_PARAMS)
def test_image_size_is_configurable(name):
    e = make(name, image_size=40, seed=0)
    try:
        obs, _ = e.reset()
        assert obs["pixels"].shape == e.render().shape == (40, 40, 3)
    finally:
        e.close()


def test_reset_and_step_are_deterministic(env):
    name = env.unwrapped.name
    actions = _actions(name, 6)
    states, frames = _rollout(env, 3, actions)
    states2, frames2 = _rollout(env, 3, actions)
    np.testing.assert_array_equal(states, states2)
    np.testing.assert_array_equal(frames, frames2)
    other_states, _ = _rollout(env, 4, actions)
    assert not np.array_equal(states[0], other_states[0])


@pytest.mark.parametrize("name", ENV_PARAMS)
def test_make_seed_seeds_the_first_reset(name):
    first = make(name, image_size=IMAGE, seed=11, **FAST.get(name, {}))
    second = make(name, image_size=IMAGE, seed=11, **FAST.get(name, {}))
    try:
        np.testing.assert_array_equal(first.reset()[0]["state"], second.reset()[0]["state"])
        np.testing.assert_array_equal(first.reset(seed=5)[0]["state"], second.reset(seed=5)[0]["state"])
    finally:
        first.close()
        second.close()


def test_set_state_round_trip_and_replay(env):
    name = env.unwrapped.name
    actions = _actions(name, 8, seed=1)
    states, frames = _rollout(env, 2, actions)
    env.set_state(states[3])
    np.testing.assert_array_equal(env.get_state(), states[3])
    np.testing.assert_array_equal(env.render(), frames[3])
    for t in range(3, 8):  # the dynamics continue from a restored state as from the original one
        env.step(actions[t])
        np.testing.assert_allclose(env.get_state(), states[t + 1], rtol=0, atol=1e-6)


def test_state_and_action_validation(env):
    name = env.unwrapped.name
    env.reset(seed=0)
    with pytest.raises(ValueError, match="state for"):
        env.set_state(np.zeros(env.state_dim + 1))
    with pytest.raises(ValueError, match="NaN"):
        env.set_state(np.full(env.state_dim, np.nan))
    with pytest.raises(ValueError, match="action for"):
        env.step(np.zeros(ACTION_DIMS[name] + 1))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(ACTION_DIMS[name], np.nan))
    with pytest.raises(ValueError, match="goal_state"):
        env.is_success(env.get_state(), np.zeros(3))


def test_step_before_reset_fails():
    with pytest.raises(RuntimeError, match="reset"):
        make("two_room", image_size=IMAGE).step(np.zeros(2))


def _goal_variants(name: str, e, state: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Goal states the paper's protocol counts as reached from ``state``, and ones it does not."""
    def moved(index, delta):
        goal = state.copy()
        goal[index] += delta
        return goal

    if name == "two_room":
        from lewm_fast.envs.two_room import SUCCESS_DISTANCE as d
        return [moved(0, 0.6 * d), moved(1, -0.6 * d)], [moved(0, 1.5 * d), moved(slice(0, 2), 1.2 * d)]
    if name == "pusht":
        reached = [moved(2, 12.0), moved(4, 0.3), moved(slice(5, 7), 50.0)]  # pusher velocity does not matter
        return reached, [moved(2, 25.0), moved(0, 25.0), moved(4, 0.4)]
    if name == "reacher":  # every joint within 0.05 rad of the goal's; velocities and target do not matter
        return [moved(0, 0.04), moved(slice(2, 6), 0.3)], [moved(0, 0.06), moved(1, -0.06)]
    cube_x = e.unwrapped._cube_xyz.start
    return [moved(cube_x, 0.03), moved(0, 0.5)], [moved(cube_x, 0.05), moved(cube_x + 2, 0.06)]


def test_success_test_on_constructed_states(env):
    name = env.unwrapped.name
    state = env.reset(seed=5)[0]["state"]
    assert env.is_success(state, state)
    reached, missed = _goal_variants(name, env, state)
    for goal in reached:
        assert env.is_success(state, goal) and env.is_success(goal, state)
    for goal in missed:
        assert not env.is_success(state, goal)
    env.set_state(reached[0])  # a constructed goal is a valid state: setting it reaches it
    assert env.is_success(env.get_state(), reached[0])


def test_pusht_angle_wraps():
    pytest.importorskip("pymunk")
    e = make("pusht", image_size=IMAGE, seed=0)
    state = e.reset()[0]["state"]
    state[4], goal = 0.05, state.copy()
    goal[4] = 2 * np.pi - 0.05
    assert e.is_success(state, goal)


def test_reacher_fingertip_kinematics():
    pytest.importorskip("dm_control")
    from lewm_fast.envs.reacher import fingertip, inverse_kinematics

    e = make("reacher", image_size=IMAGE, seed=0)
    for seed in range(3):
        state = e.reset(seed=seed)[0]["state"]
        np.testing.assert_allclose(fingertip(state[:2]), e.physics.named.data.geom_xpos["finger", :2], atol=1e-9)
        point = state[4:6]
        np.testing.assert_allclose(fingertip(inverse_kinematics(point, state[:2])), point, atol=1e-9)
    e.close()


def test_missing_simulator_names_the_extra(monkeypatch):
    for name, module in (("pusht", "pymunk"), ("reacher", "dm_control.suite.reacher"),
                         ("cube", "ogbench.manipspace.envs.cube_env")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)
            with pytest.raises(ImportError, match=r'pip install "lewm-fast\[envs\]"'):
                make(name, image_size=IMAGE)


def test_core_imports_without_simulators():
    code = (
        "import sys\n"
        "for m in ('pymunk', 'mujoco', 'dm_control', 'ogbench'): sys.modules[m] = None\n"
        "import lewm_fast, lewm_fast.envs, lewm_fast.data, lewm_fast.cli.collect\n"
        "e = lewm_fast.envs.make('two_room', image_size=32, seed=0)\n"
        "assert e.reset()[0]['pixels'].shape == (32, 32, 3)\n"
        "try:\n    lewm_fast.envs.make('cube')\nexcept ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "lewm-fast[envs]"' in result.stdout


# ---- policies -----------------------------------------------------------------------------------------------------
def test_policies_act_in_the_action_space_deterministically(env):
    name = env.unwrapped.name
    for kind in POLICY_KINDS:
        policy = make_policy(name, env, kind, seed=0)
        runs = []
        for _ in range(2):
            obs, _ = env.reset(seed=8)
            policy.reset(3)
            actions = []
            for _ in range(3):
                action = policy.act(obs)
                assert action.shape == (ACTION_DIMS[name],) and action.dtype == np.float32
                assert np.all(np.abs(action) <= 1.0)
                actions.append(action)
                obs = env.step(action)[0]
            runs.append(np.stack(actions))
        np.testing.assert_array_equal(runs[0], runs[1])


def test_make_policy_bad_arguments():
    e = make("two_room", image_size=IMAGE)
    with pytest.raises(ValueError, match="unknown policy kind"):
        make_policy("two_room", e, kind="greedy")
    with pytest.raises(ValueError, match="unknown environment"):
        make_policy("maze", e)
    with pytest.raises(ValueError, match="kind='mixed' only"):
        make_policy("two_room", e, kind="expert", expert_fraction=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_policy("two_room", e, kind="mixed", expert_fraction=1.5)


def test_mixed_policy_uses_the_expert_for_the_stated_fraction():
    e = make("two_room", image_size=IMAGE)
    policy = make_policy("two_room", e, kind="mixed", expert_fraction=0.3)
    chosen = []
    for seed in range(400):
        policy.reset(seed)
        chosen.append(policy.use_expert)
    assert abs(np.mean(chosen) - 0.3) < 0.07
    assert envs.DEFAULT_EXPERT_FRACTION.keys() == set(ENV_NAMES)


def _run_expert(name: str, seed: int, steps: int, **kwargs) -> tuple[np.ndarray, list[bool], list[np.ndarray]]:
    e = make(name, image_size=16, **kwargs)
    try:
        policy = make_policy(name, e, "expert", seed=seed)
        obs, info = e.reset(seed=seed)
        start, successes, states = obs["state"], [], []
        for _ in range(steps):
            obs, _, _, _, info = e.step(policy.act(obs))
            successes.append(info["is_success"])
            states.append(obs["state"])
        return start, successes, states
    finally:
        e.close()


def test_two_room_expert_goes_through_the_door():
    from lewm_fast.envs.two_room import TwoRoomExpert

    e = make("two_room", image_size=16)
    for start in ([40.0, 180.0, 190.0, 60.0], [200.0, 30.0, 30.0, 200.0]):  # the target in the other room
        expert = TwoRoomExpert(e, seed=0, noise=0.0)
        obs, _ = e.reset(options={"state": start})
        for _ in range(100):
            obs, _, terminated, _, _ = e.step(expert.act(obs))
            if terminated:
                break
        assert terminated


@pytest.mark.parametrize("name", [p for p in ENV_PARAMS if p.values[0] == "reacher"])
def test_reacher_expert_reaches_the_target(name):
    for seed in range(2):
        assert any(_run_expert(name, seed, 40)[1])


@pytest.mark.parametrize("name", [p for p in ENV_PARAMS if p.values[0] == "pusht"])
def test_pusht_expert_pushes_the_block_toward_the_target(name):
    from lewm_fast.envs.pusht import GOAL_POSE

    start, _, states = _run_expert(name, 2, 150)
    before = np.linalg.norm(start[2:4] - np.array(GOAL_POSE[:2]))
    after = np.linalg.norm(states[-1][2:4] - np.array(GOAL_POSE[:2]))
    assert after < 0.5 * before


@pytest.mark.parametrize("name", [p for p in ENV_PARAMS if p.values[0] == "cube"])
def test_cube_expert_picks_up_the_cube(name):
    e = make(name, image_size=16, fast_render=True)
    try:
        policy = make_policy(name, e, "expert", seed=1)
        obs, _ = e.reset(seed=1)
        heights = []
        for _ in range(45):
            obs = e.step(policy.act(obs))[0]
            heights.append(e.unwrapped.cube_position(obs["state"])[2])
        assert max(heights) > 0.06  # lifted off the table (resting height 0.02)
    finally:
        e.close()


# what the process imports before lewm_fast.envs.make: lewm_fast.envs alone, triton, mujoco, dm_control (whose import
# makes an EGL display: Mesa's libLLVM is then loaded), or lewm_fast.envs and then dm_control
IMPORT_ORDERS = {
    "envs": "import lewm_fast.envs\n",
    "triton": "import triton\n",
    "mujoco": "import mujoco\n",
    "dm_control": "from dm_control import suite\n",
    "envs_then_dm_control": "import lewm_fast.envs\nfrom dm_control import suite\n",
}
RUN_TRITON_KERNEL = (
    "import torch, triton, triton.language as tl\n"
    "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])\n"
    "@triton.jit\n"
    "def double(x_ptr, BLOCK: tl.constexpr):\n"
    "    offs = tl.arange(0, BLOCK)\n"
    "    tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)\n"
)


def _gl_env(**extra: str) -> dict:
    """The test process's environment with a headless backend named (MUJOCO_GL=egl unless set): a process that
    imports mujoco or dm_control before lewm_fast must choose one itself (lewm_fast refuses to guess afterwards)."""
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), **extra}


@pytest.mark.parametrize("name, first", [
    *[pytest.param(*p.values, order, marks=p.marks, id=f"{p.values[0]}-{order}")
      for p in ENV_PARAMS if p.values[0] == "reacher" for order in IMPORT_ORDERS],
    *[pytest.param(*p.values, "envs", marks=p.marks, id="cube-envs") for p in ENV_PARAMS if p.values[0] == "cube"],
])
def test_triton_loads_after_mujoco_rendered(name, first):
    """Mesa's software OpenGL loads the system libLLVM; a libtriton.so loaded after it used to bind its LLVM to that
    one and die with SIGSEGV (collect Reacher data, then torch.optim / a Triton kernel in the same process; or
    ``from dm_control import suite`` first, then ``lewm_fast.envs.make('reacher')``). Fresh process per import order:
    make the env, render, then run a Triton kernel (interpreter: no GPU here)."""
    pytest.importorskip("triton")
    if first in ("dm_control", "envs_then_dm_control"):
        pytest.importorskip("dm_control")
    code = (
        IMPORT_ORDERS[first] + "import lewm_fast.envs as envs\n"
        f"e = envs.make({name!r}, image_size=32, seed=0, **{FAST.get(name, {})!r})\n"
        "e.reset(); assert e.render().shape == (32, 32, 3)\n"
        + RUN_TRITON_KERNEL +
        "x = torch.ones(16)\n"
        "double[(1,)](x, BLOCK=16)\n"
        "assert bool((x == 2).all())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=_gl_env(TRITON_INTERPRET="1"))
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("name", [p for p in ENV_PARAMS if p.values[0] == "reacher"])
def test_triton_compiles_after_dm_control_loaded_mesa(tmp_path, name):
    """With Mesa's libLLVM loaded first, lewm_fast loads libtriton.so with RTLD_DEEPBIND: Triton's own LLVM must still
    compile (a kernel to sm_90 PTX and cubin, ahead of time: no GPU needed)."""
    pytest.importorskip("triton")
    pytest.importorskip("dm_control")
    code = (
        IMPORT_ORDERS["dm_control"] + "import lewm_fast.envs as envs\n"
        f"envs.make({name!r}, image_size=32, seed=0).reset()\n"
        + RUN_TRITON_KERNEL +
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        "k = triton.compile(ASTSource(double, {'x_ptr': '*fp32', 'BLOCK': 'constexpr'}, {'BLOCK': 16}),\n"
        "                   target=GPUTarget('cuda', 90, 32))\n"
        "assert 'st.global' in k.asm['ptx'] and len(k.asm['cubin']) > 0\n"
        "print('ok')\n"
    )
    script = tmp_path / "compile_after_mesa.py"  # compiled @triton.jit functions must live in a file
    script.write_text(code)
    env = {k: v for k, v in _gl_env().items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (result.returncode, result.stderr[-2000:])
