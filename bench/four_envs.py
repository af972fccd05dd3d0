"""Collect, train and evaluate LeWM on the four environments with stable-worldmodel's protocol, on this machine.

For each env: ``lewm-collect`` (the env's official collection policy), ``lewm-train`` (CPU preset), ``lewm-eval``
(defaults: dataset goals from the run's held-out episodes, goal 25 steps ahead, budget 50, history 1). Writes
``<out>/summary.json`` and prints a Markdown table with 95 % Wilson intervals, next to the paper's numbers::

    python bench/four_envs.py --out runs/four_envs --episodes two_room=300 pusht=100 reacher=100 cube=40
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

PAPER = {"two_room": 87, "pusht": 96, "reacher": 86, "cube": 74}  # LeWM success rates (%), arXiv 2603.19312
ENV_KWARGS = {"cube": ["+env_kwargs.fast_render=true"]}  # no shadows/reflections: CPU rendering of cube is slow


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def run(cmd: list[str], log: Path) -> float:
    """Run a lewm CLI module, its output appended to ``log``; -> seconds."""
    start = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run([sys.executable, "-m", *cmd], stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), platform.processor())


def one_env(env: str, episodes: int, args: argparse.Namespace) -> dict:
    out = Path(args.out) / env
    out.mkdir(parents=True, exist_ok=True)
    log, data, run_dir = out / "log.txt", out / f"{env}.h5", out / "run"
    collect = ["lewm_fast.cli.collect", f"env={env}", f"episodes={episodes}", f"image_size={args.image_size}", f"out={data}",
               "progress=false", *ENV_KWARGS.get(env, [])]
    seconds = {
        "collect": run([*collect, "append=true"] if args.reuse_data and data.exists() else [*collect, "overwrite=true"], log),
        "train": run(["lewm_fast.cli.train", "--fused-sigreg", f"data={env}", f"data.path={data}", f"out={run_dir}",
                      f"epochs={args.epochs}", *args.train_args], log),
        "eval": run(["lewm_fast.cli.evaluate", f"checkpoint={run_dir}", f"episodes={args.eval_episodes}",
                     f"planner={args.planner}", "save_episodes=2", f"workers={args.workers}", f"out={out / 'eval'}",
                     *ENV_KWARGS.get(env, [])], log),
    }
    results = json.loads((out / "eval" / "results.json").read_text())
    train = json.loads((run_dir / "train_log.json").read_text())
    lo, hi = wilson(results["successes"], results["episodes"])
    return {
        "env": env, "episodes_collected": episodes, "image_size": args.image_size, "epochs": args.epochs,
        "train_sequences": train.get("dataset_sequences"), "successes": results["successes"],
        "eval_episodes": results["episodes"], "success_rate": results["success_rate"], "ci95": [lo, hi],
        "plan_latency_mean_s": results["plan_latency_mean_s"], "paper_success_pct": PAPER[env], "seconds": seconds,
    }


def table(rows: list[dict]) -> str:
    head = ("| env | episodes (frames) | image | epochs | success (95 % CI) | mean plan | paper |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['env']} | {r['episodes_collected']} | {r['image_size']} px | {r['epochs']} | "
            f"{r['successes']}/{r['eval_episodes']} = {100 * r['success_rate']:.0f} % ({100 * lo:.0f}–{100 * hi:.0f} %) | "
            f"{1e3 * r['plan_latency_mean_s']:.0f} ms | {r['paper_success_pct']} % |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/four_envs")
    parser.add_argument("--episodes", nargs="+", default=["two_room=300", "pusht=100", "reacher=100", "cube=40"],
                        help="env=episodes to collect, in the order to run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--planner", default="cpu_quick", help="lewm-eval planner group (cem = paper: 300 x 30)")
    parser.add_argument("--workers", type=int, default=1, help="lewm-eval processes")
    parser.add_argument("--train-args", nargs="*", default=[], help="extra lewm-train key=value overrides")
    parser.add_argument("--results", default=None, help="also write the summary JSON here (e.g. bench/results/...)")
    parser.add_argument("--reuse-data", action="store_true", help="keep an existing episode file (collect only what it lacks)")
    args = parser.parse_args()
    rows = []
    for spec in args.episodes:
        env, _, n = spec.partition("=")
        rows.append(one_env(env, int(n), args))
        print(table(rows), flush=True)
    import torch

    summary = {"date": date.today().isoformat(), "cpu": cpu_model(), "torch": torch.__version__, "planner": args.planner,
               "protocol": "lewm-eval defaults: dataset goals (held-out episodes), goal_offset 25, budget 50, history_len 1",
               "rows": rows}
    for path in filter(None, [Path(args.out) / "summary.json", args.results and Path(args.results)]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
