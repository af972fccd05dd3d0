"""The browser page's step latency: `lewm-fast web` (the shipped Two-Room model) in headless Chromium (playwright, the
system's Chromium), one run from a start to a goal per CEM setting, as docs/browser.md's table reports it.

    python bench/web_latency.py [--settings 64x4x8 128x6x12 300x10x30] [--start 40,185] [--goal 185,40]
                                [--out bench/results/web-latency-<date>.json] [--screenshot page.png]

A setting is samples x iterations x elites (horizon 5). Per setting: steps and env steps to the goal (or the budget),
the step time (encode + plan) min and median over the steps after the first, the first step, the median encode time,
the load average (/proc/loadavg, 1 min) before and after the run and where the agent ended; with the CPU model, the
Chromium and onnxruntime-web versions, the backend and its threads. Needs Chromium, playwright and `npm ci` in
lewm_fast/web.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def run_setting(browser, url: str, setting: str, start: list[float], goal: list[float], budget: int,
                screenshot: Path | None = None) -> dict:
    samples, iterations, topk = (int(v) for v in setting.split("x"))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}?agent={start[0]},{start[1]}&seed=0&samples={samples}&iterations={iterations}&topk={topk}"
              f"&budget={budget}")
    page.wait_for_function("window.lewm.ready || window.lewm.error", timeout=120_000)
    box = page.locator("#env").bounding_box()
    page.mouse.click(box["x"] + goal[0] / 224 * box["width"], box["y"] + goal[1] / 224 * box["height"])
    page.wait_for_function("window.lewm.goal !== null && !window.lewm.busy", timeout=60_000)
    load_before = os.getloadavg()[0]
    page.evaluate("document.getElementById('play').click()")
    page.wait_for_function("!window.lewm.running && !window.lewm.busy || window.lewm.error", timeout=1_800_000,
                           polling=500)
    load_after = os.getloadavg()[0]
    lewm = page.evaluate("window.lewm")
    if lewm["error"]:
        raise RuntimeError(lewm["error"])
    steps = [t["encode"] + t["plan"] for t in lewm["times"]]
    later = steps[1:] or steps
    row = {"setting": lewm["settings"], "reached": lewm["reached"], "agent": [round(v, 1) for v in lewm["agent"]],
           "steps": lewm["steps"],
           "env_steps": lewm["envSteps"], "step_min_s": min(later) / 1e3,
           "step_median_s": statistics.median(later) / 1e3,
           "first_step_s": steps[0] / 1e3, "encode_median_ms": statistics.median(t["encode"] for t in lewm["times"]),
           "load_before": load_before, "load_after": load_after, "backend": lewm["backend"],
           "threads": lewm["threads"], "runtime": page.inner_text("#runtime")}
    if screenshot:
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["64x4x8", "128x6x12", "300x10x30"])
    parser.add_argument("--start", default="40,185")
    parser.add_argument("--goal", default="185,40")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / f"web-latency-{datetime.date.today()}.json")
    parser.add_argument("--screenshot", type=Path, help="a screenshot of the first setting's page at the end")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LEWM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    start, goal = ([float(v) for v in s.split(",")] for s in (args.start, args.goal))
    proc = subprocess.Popen([sys.executable, "-m", "lewm_fast.cli.info", "web", "port=0"], text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = re.search(r"at (http://\S+)", proc.stdout.readline()).group(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            rows = []
            for setting in args.settings:
                shot = args.screenshot if not rows else None
                rows.append(run_setting(browser, url, setting, start, goal, args.budget, shot))
                print(json.dumps(rows[-1]), flush=True)
            version = browser.version
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "cpus": os.cpu_count(), "chromium": version, "start": start, "goal": goal,
              "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
