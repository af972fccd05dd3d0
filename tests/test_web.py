"""lewm-fast web in headless Chromium (playwright, the system's Chromium): the server exports the shipped model and
serves the page; a click places a goal the agent can reach in <= 30 env steps, ▶ plans and acts until the agent gets
there, encode and plan times are shown, the console stays clean (no errors, no warnings: the default backend does not
probe WebGPU). After that, ▶ / ❚❚, Step and the status line agree through a reached goal, a new goal, a pause and a
used-up step budget; Reset starts the agent inside the borders. The page shows a readable error without model files
or without WebAssembly. Without Chromium, playwright, onnxruntime-web (npm ci) or the shipped model the tests are
skipped, except under CI (CI=true), where they fail."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lewm_fast.assets import DEFAULT_MODEL
from lewm_fast.cli.info import main as cli_main
from lewm_fast.web.site import ORT_DIST, ORT_FILES, WEB, cache_folder, make_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = next((path for path in (os.environ.get("LEWM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                                   shutil.which("chromium-browser")) if path and os.path.isfile(path)), None)
START, GOAL = (35.0, 150.0), (92.0, 172.0)  # left room, 61 px apart: 13 env steps at 5 px per step
MAX_STEPS = 20  # plan steps (one action block of 5 env steps each) allowed to get there
DETOUR = (185.0, 185.0)  # the right room's lower half: from the left room's lower half only through the door at y=49
PLAY, PAUSE = "▶", "❚❚"


def missing() -> str | None:
    if CHROMIUM is None:
        return "Chromium is not installed (apt-get install chromium, or set LEWM_CHROMIUM=<path>)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; it drives the system's Chromium)"
    if not all((ORT_DIST / name).is_file() for name in ORT_FILES):
        return f"onnxruntime-web is not installed: npm ci --ignore-scripts --prefix {WEB}"
    if not (DEFAULT_MODEL / "weights.pt").is_file():
        return "the shipped model is not in this checkout"
    return None


REASON = missing()


@pytest.fixture(scope="module", autouse=True)
def requirements():
    """Skip the module when something it needs is missing; fail instead under CI (before any other fixture runs)."""
    if REASON and IN_CI:
        pytest.fail(f"the browser tests cannot run under CI: {REASON}", pytrace=False)
    if REASON:
        pytest.skip(REASON)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lewm-fast web port=0`` in a subprocess (its cache in a temporary folder): -> (url, site folder)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lewm_fast.cli.info", "web", "port=0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        match = re.search(r"serving (\S+) at (http://\S+)", line)
        assert match, f"no server line: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield match.group(2), Path(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, url: str, init_script: str | None = None):
    """A page at ``url`` whose console errors and uncaught exceptions are collected in ``page.errors``, its console
    warnings in ``page.warnings``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors, page.warnings = [], []
    page.on("console", lambda msg: (page.errors if msg.type == "error" else page.warnings).append(msg.text)
            if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    page.wait_for_function("window.lewm && (window.lewm.ready || window.lewm.error)", timeout=120_000)
    return page


def click_goal(page, position) -> list:
    """Click the room at ``position`` (224-frame pixels) and wait until the page has set that goal -> the goal."""
    box = page.locator("#env").bounding_box()
    page.mouse.click(box["x"] + position[0] / 224 * box["width"], box["y"] + position[1] / 224 * box["height"])
    page.wait_for_function(f"window.lewm.goal !== null && Math.abs(window.lewm.goal[0] - {position[0]}) < 1 && "
                           f"Math.abs(window.lewm.goal[1] - {position[1]}) < 1 && !window.lewm.busy", timeout=30_000)
    return page.evaluate("window.lewm.goal")


def controls(page) -> tuple[bool, str, str]:
    """(running, the play button's text, the status line)."""
    return tuple(page.evaluate(STATE))


STATE = ("[window.lewm.running, document.getElementById('play').textContent, "
         "document.getElementById('status').textContent]")


def press(page, button: str) -> tuple[bool, str, str]:
    """Click ``button`` in the page and read :func:`controls` in the same task, before any planning step can end."""
    return tuple(page.evaluate(f"document.getElementById('{button}').click(), {STATE}"))


def test_click_to_plan_reaches_the_goal(server, browser, tmp_path):
    url, _ = server
    page = open_page(browser, f"{url}?agent={START[0]},{START[1]}&seed=0")
    assert page.evaluate("window.lewm.error") is None
    assert page.input_value("#backend") == "wasm"
    goal = click_goal(page, GOAL)
    assert controls(page) == (False, PLAY, "goal set: press ▶ (or Step)")
    page.click("#play")
    page.wait_for_function(f"window.lewm.reached || window.lewm.error || window.lewm.steps >= {MAX_STEPS}",
                           timeout=300_000)
    lewm = page.evaluate("window.lewm")
    page.screenshot(path=str(tmp_path / "web_demo.png"), full_page=True)
    assert lewm["error"] is None
    assert lewm["reached"], f"not at the goal after {lewm['steps']} steps: agent {lewm['agent']}, goal {goal}"
    assert lewm["envSteps"] <= 5 * MAX_STEPS and len(lewm["times"]) == lewm["steps"] >= 1
    assert all(t["encode"] > 0 and t["plan"] > 0 for t in lewm["times"])
    assert re.fullmatch(r"\d+ ms", page.inner_text("#encode-ms"))
    assert re.match(r"\d+ ms \(4 × \d+ ms\)", page.inner_text("#plan-ms"))
    assert controls(page) == (False, PLAY, f"goal reached in {lewm['steps']} steps ({lewm['envSteps']} env steps): "
                                           "click a new goal")
    assert page.errors == [] and page.warnings == []
    steps = [t["encode"] + t["plan"] for t in lewm["times"][1:]] or [lewm["times"][0]["encode"] + lewm["times"][0]["plan"]]
    report = {"backend": lewm["backend"], "threads": lewm["threads"], "settings": lewm["settings"],
              "steps": lewm["steps"], "env_steps": lewm["envSteps"], "median_step_ms": float(np.median(steps)),
              "first_step_ms": lewm["times"][0]["encode"] + lewm["times"][0]["plan"]}
    (tmp_path / "latency.json").write_text(json.dumps(report, indent=1))
    print(f"\nweb demo: {report}  screenshot: {tmp_path / 'web_demo.png'}")


def test_play_pause_step_and_budget(server, browser):
    """The controls' state through a reached goal, ▶ on it, a new goal, Step, a pause, a used-up budget and Reset."""
    url, _ = server
    page = open_page(browser, f"{url}?agent={START[0]},{START[1]}&seed=0&budget=6")
    assert press(page, "play") == (False, PLAY, "click to place a goal first")
    click_goal(page, (START[0] + 10, START[1]))  # within the success distance
    assert controls(page) == (False, PLAY, "already at the goal: click elsewhere")
    assert press(page, "play") == (False, PLAY, "already at the goal: click elsewhere")  # nothing to run: ▶ stays

    click_goal(page, DETOUR)
    assert controls(page) == (False, PLAY, "goal set: press ▶ (or Step)")
    assert press(page, "step") == (False, PLAY, "planning…")
    page.wait_for_function("window.lewm.steps === 1 && !window.lewm.busy", timeout=60_000)
    assert controls(page) == (False, PLAY, "paused after 1 step: press ▶ or Step")
    assert press(page, "play") == (True, PAUSE, "planning… step 2 of at most 6")
    assert page.is_disabled("#step")
    page.wait_for_function("window.lewm.steps >= 2", timeout=60_000)
    running, button, _ = press(page, "play")  # pause: the step in flight finishes, the loop stops
    assert (running, button) == (False, PLAY)
    page.wait_for_function("!window.lewm.busy", timeout=60_000)
    steps = page.evaluate("window.lewm.steps")
    assert steps < 6 and controls(page) == (False, PLAY, f"paused after {steps} steps: press ▶ or Step")
    assert not page.is_disabled("#step")

    assert press(page, "play")[:2] == (True, PAUSE)
    page.wait_for_function("(window.lewm.outOfBudget && !window.lewm.running) || window.lewm.error", timeout=120_000)
    lewm = page.evaluate("window.lewm")
    assert lewm["error"] is None and lewm["steps"] == 6 and not lewm["reached"]
    running, button, status = controls(page)
    assert (running, button) == (False, PLAY) and status.startswith("not reached within the budget of 6 steps")
    assert press(page, "play") == (False, PLAY, status)  # the budget is used up: ▶ stays, the status says why
    press(page, "step")
    assert page.evaluate("window.lewm.steps") == 6

    constants = page.evaluate("window.lewm.constants")
    (lo, hi), reach = constants["CLEAR"], constants["REACH"]
    for _ in range(25):  # a random start lies inside the borders and outside the wall's reach
        page.click("#reset")
        page.wait_for_function("window.lewm.steps === 0 && window.lewm.trail.length === 1")
        x, y = page.evaluate("window.lewm.agent")
        assert lo <= x <= hi and lo <= y <= hi and not reach[0] <= x <= reach[1], (x, y)
    assert controls(page) == (False, PLAY, "goal set: press ▶ (or Step)")
    assert page.errors == [] and page.warnings == []


@pytest.fixture(scope="module")
def idm_site(tmp_path_factory):
    """The shipped model's site with a GC-IDM of random weights for it (idm.onnx, manifest "idm"), served: -> (url,
    the IDM in PyTorch)."""
    import torch

    from lewm_fast.export.onnx import load_for_export
    from lewm_fast.io.idm import save_idm, weights_hash
    from lewm_fast.reference.idm import GCIDM
    from lewm_fast.web.site import build_site

    model, _, _ = load_for_export(DEFAULT_MODEL)
    torch.manual_seed(0)
    idm = GCIDM(model.latent_dim, model.action_dim, hidden=64, layers=2, horizon=5).eval()
    folder = tmp_path_factory.mktemp("idm")
    save_idm(folder, idm, weights_hash(model), {"env": "two_room", "frameskip": 5, "env_action_dim": 2, "horizon": 5})
    site = tmp_path_factory.mktemp("idm_site")
    manifest = build_site(DEFAULT_MODEL, site, idm=folder)
    assert manifest["idm"]["horizon"] == 5 and (site / "idm.onnx").is_file()
    httpd, url = serve(site)
    yield url, idm
    httpd.shutdown()
    httpd.server_close()


def test_policy_mode_runs_the_idm(server, idm_site, browser):
    """mode=policy: each step executes IDM(z, goal, k/K) with k counting down from K = 5 (at least 1), as lewm-eval's
    IDMPolicy; the page's blocks equal the PyTorch IDM's on the page's latents."""
    import torch

    url, idm = idm_site
    page = open_page(browser, f"{url}?agent={START[0]},{START[1]}&seed=0&mode=policy")
    assert page.evaluate("window.lewm.error") is None and page.input_value("#mode") == "policy"
    assert not page.is_visible("#samples")  # CEM settings hidden in policy mode
    click_goal(page, GOAL)
    for k in range(6):
        press(page, "step")
        page.wait_for_function(f"window.lewm.steps === {k + 1} && !window.lewm.busy || window.lewm.error",
                               timeout=60_000)
        lewm = page.evaluate("window.lewm")
        assert lewm["error"] is None and lewm["mode"] == "policy"
        if lewm["reached"]:
            break
        with torch.no_grad():
            want = idm(torch.tensor([lewm["latentTrail"][k]]), torch.tensor([lewm["goalLatent"]]),
                       torch.tensor([max(5 - k, 1) / 5]))[0]
        np.testing.assert_allclose(lewm["lastBlock"], want.numpy(), rtol=0, atol=1e-4)
        assert page.inner_text("#plan-ms").endswith("(one IDM pass)")
    assert page.errors == [] and page.warnings == []


def test_policy_mode_on_the_shipped_model_reaches_the_goal(server, browser):
    """The shipped model comes with its GC-IDM (lewm_fast/assets/two_room/idm): its export has idm.onnx, and policy
    mode (one IDM pass per step) gets the agent to the clicked goal."""
    url, site = server
    assert json.loads((site / "manifest.json").read_text())["idm"]["file"] == "idm.onnx"
    page = open_page(browser, f"{url}?agent={START[0]},{START[1]}&seed=0&mode=policy")
    assert page.evaluate("window.lewm.error") is None and page.input_value("#mode") == "policy"
    assert not page.evaluate("document.querySelector('#mode [value=policy]').disabled")
    click_goal(page, GOAL)
    page.click("#play")
    page.wait_for_function(f"window.lewm.reached || window.lewm.error || window.lewm.steps >= {MAX_STEPS}",
                           timeout=120_000)
    lewm = page.evaluate("window.lewm")
    assert lewm["error"] is None and lewm["mode"] == "policy"
    assert lewm["reached"], f"not at the goal after {lewm['steps']} steps: agent {lewm['agent']}, goal {GOAL}"
    assert page.errors == [] and page.warnings == []


def test_policy_mode_is_off_without_an_idm(browser, tmp_path):
    """A model folder without idm/ exports no idm.onnx: the page opens in plan mode with the policy option disabled."""
    from lewm_fast.web.site import build_site

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "weights.pt", "normalization.json", "latent_pca.json"):
        shutil.copy2(DEFAULT_MODEL / name, folder / name)
    manifest = build_site(folder, tmp_path / "site")
    assert "idm" not in manifest and not (tmp_path / "site" / "idm.onnx").exists()
    httpd, url = serve(tmp_path / "site")
    try:
        page = open_page(browser, f"{url}?mode=policy")
        assert page.input_value("#mode") == "plan"
        assert page.evaluate("document.querySelector('#mode [value=policy]').disabled")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_out_writes_the_static_folder(server, tmp_path, capsys):
    """``lewm-fast web --out`` on the served folder reuses its export; the folder holds everything the page loads."""
    _, site = server
    before = (site / "encoder.onnx").stat().st_mtime
    assert cli_main(["web", "--out", str(site)]) == 0
    assert "wrote the site" in capsys.readouterr().out
    assert (site / "encoder.onnx").stat().st_mtime == before  # reused, not exported again
    for name in ("index.html", "app.js", "env.js", "cem.js", "palette.js", "manifest.json", "planner.onnx",
                 *(f"ort/{n}" for n in ORT_FILES)):
        assert (site / name).is_file(), name


def serve(folder: Path):
    server = make_server(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_readable_errors(server, browser, tmp_path):
    _, site = server
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    (broken / "encoder.onnx").unlink()
    httpd, url = serve(broken)
    try:
        page = open_page(browser, url)
        assert "model file encoder.onnx is missing (HTTP 404)" in page.inner_text("#error")
        assert page.is_visible("#error") and page.is_disabled("#play")
        page = open_page(browser, url, init_script="delete window.WebAssembly;")
        assert "no WebAssembly" in page.inner_text("#error")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_web_bad_input(server, capsys, tmp_path, monkeypatch):
    assert cli_main(["web", "port=http"]) == 2
    assert capsys.readouterr().err.strip() == "lewm-fast: error: port must be an integer, got 'http'"
    assert cli_main(["web", f"checkpoint={tmp_path}", f"out={tmp_path / 'site'}"]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err
    _, site = server
    monkeypatch.setenv("XDG_CACHE_HOME", str(site.parents[2]))  # the served site: reused, not exported again
    assert site == cache_folder(DEFAULT_MODEL)
    busy = make_server(tmp_path, 0)
    try:
        assert cli_main(["web", f"port={busy.server_address[1]}"]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        busy.server_close()
