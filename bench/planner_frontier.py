"""Success per millisecond: every planner on the same goals, success with 95 % Wilson intervals against the median
per-decision latency on this machine (issue 24).

Per env (the shipped Two-Room model; the Reacher and PushT runs of bench/four_envs.py): a GC-IDM is trained first
(``lewm-train-idm``, skipped when it exists), then one ``lewm-eval`` run per planner cell with lewm-eval's defaults
(50 episodes, dataset goals from the run's held-out episodes, goal 25 steps ahead, budget 50, history 1); cells whose
``results.json`` exists are skipped, so the script resumes. Latency: the evals' own per-decision timings are taken on a
shared machine, so a second pass times one decision (``act`` after ``reset``, the same start and goal) of every
planner round-robin, ``--rounds`` times, after one warm-up call each; the table reports its median. Writes
``<results>/planner-frontier-<date>.{json,md,png}``::

    OMP_NUM_THREADS=1 python bench/planner_frontier.py --out runs/frontier --envs two_room reacher pusht
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from four_envs import cpu_model, wilson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # env -> (checkpoint, IDM folder or None for <run>/idm)
    "two_room": ("lewm_fast/assets/two_room", "gc_idm"),  # the shipped model: its IDM goes under --out, not the package
    "reacher": ("runs/four_envs/reacher/run", None),
    "pusht": ("runs/four_envs/pusht/run", None),
}
BOUNDS = "planner.action_bounds=clip"  # the sampling cells as published (lewm-eval's default when they were measured)
CELLS = {  # cell -> (label, lewm-eval overrides); cheap ones first
    "idm": ("IDM", ["planner=idm"]),
    "idm_cem": ("IDM+CEM 300x3", ["planner=idm_cem", BOUNDS]),
    "cem_300x10": ("CEM 300x10", ["planner=cpu_quick", BOUNDS]),
    "mppi": ("MPPI 300x10", ["planner=mppi", BOUNDS]),
    "icem": ("iCEM 300x10", ["planner=icem", BOUNDS]),
    "cem_300x30": ("CEM 300x30", ["planner=cem", BOUNDS]),
}


def idm_overrides(env: str, out: Path) -> List[str]:
    folder = RUNS[env][1]
    return [f"planner.idm={out / env / folder}"] if folder else []


def train_idm(env: str, out: Path, log: Path) -> None:
    checkpoint, folder = RUNS[env]
    target = out / env / folder if folder else None
    folder = target or ROOT / checkpoint / "idm"
    if (folder / "train_idm.json").is_file():  # written when the training finished
        return
    cmd = [sys.executable, "-m", "lewm_fast.cli.train_idm", f"checkpoint={checkpoint}", "progress=false"]
    cmd += [f"out={target}"] if target else []
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)


def wait_for_run(env: str, poll_s: float = 60.0) -> None:
    """bench/four_envs.py runs (runs/four_envs/<env>/log.txt) are complete when their log's last line is "done"."""
    log = ROOT / "runs" / "four_envs" / env / "log.txt"
    if env == "two_room" or not log.is_file():
        return
    while not log.read_text(errors="replace").rstrip().endswith("done"):
        time.sleep(poll_s)


def run_cell(env: str, cell: str, out: Path, run: bool = True) -> dict:
    """One lewm-eval run (skipped when its results.json exists) -> its results.json; FileNotFoundError when it has
    none and ``run`` is false."""
    dest = out / env / cell
    if not (dest / "results.json").is_file():
        if not run:
            raise FileNotFoundError(dest / "results.json")
        extra = idm_overrides(env, out) if cell.startswith("idm") else []
        cmd = [sys.executable, "-m", "lewm_fast.cli.evaluate", f"checkpoint={RUNS[env][0]}", *CELLS[cell][1], *extra,
               f"out={dest}", "save_episodes=0"]
        with (out / env / f"{cell}.log").open("w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return json.loads((dest / "results.json").read_text())


def interleaved_latency(env: str, cells: List[str], out: Path, rounds: int) -> Dict[str, List[float]]:
    """Seconds per decision of each cell's planner, timed round-robin (same machine load for all)."""
    import torch
    from lewm_fast.config import compose_config
    from lewm_fast.evaluation.mpc import render_state
    from lewm_fast.evaluation.runner import Evaluation
    from lewm_fast.reference.vit import preprocess_frames

    planners, inputs = {}, None
    for cell in cells:
        extra = idm_overrides(env, out) if cell.startswith("idm") else []
        cfg = compose_config("eval", [f"checkpoint={RUNS[env][0]}", *CELLS[cell][1], *extra, "episodes=1"])
        ev = Evaluation(cfg, out_dir=out / env / "latency")
        if inputs is None:
            start, goal_state = ev.goals(int(cfg.seed))
            frame = preprocess_frames(torch.from_numpy(render_state(ev.env, start)))
            goal = preprocess_frames(torch.from_numpy(render_state(ev.env, goal_state)))
            inputs = (frame[None, None], goal[None], torch.zeros(1, 0, ev.model.action_dim))
        planners[cell] = ev.planner
    times: Dict[str, List[float]] = {cell: [] for cell in cells}
    for r in range(rounds + 1):
        for cell, planner in planners.items():
            planner.reset()
            t0 = time.perf_counter()
            planner.act(*inputs)
            if r:  # round 0 warms up
                times[cell].append(time.perf_counter() - t0)
    return times


def median(xs: List[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if not n else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in rows))
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for r in (r for r in rows if r["env"] == env):
            lo, hi = r["ci95"]
            y = 100 * r["success_rate"]
            ax.errorbar(1e3 * r["latency_median_s"], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", capsize=3,
                        label=r["planner"])
        ax.set_xscale("log")
        ax.set_xlabel("median latency per decision (ms, log)")
        ax.set_ylabel("success (%), 95 % Wilson")
        ax.set_title(env)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/frontier")
    parser.add_argument("--envs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--rounds", type=int, default=5, help="timed decisions per planner in the latency pass")
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--evals-only", action="store_true", help="run the evals, skip the latency pass and report")
    parser.add_argument("--report-only", action="store_true",
                        help="no new training or evals: time and report the cells that finished, list the others")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    rows, missing = [], []
    for env in args.envs:
        (out / env).mkdir(parents=True, exist_ok=True)
        wait_for_run(env)
        if not Path(ROOT / RUNS[env][0]).exists():
            missing += [f"{env}/{c} (no run at {RUNS[env][0]})" for c in args.cells]
            continue
        if any(c.startswith("idm") for c in args.cells) and not args.report_only:
            train_idm(env, out, out / env / "train_idm.log")
        results = {}
        for cell in args.cells:
            try:
                results[cell] = run_cell(env, cell, out, run=not args.report_only)
            except subprocess.CalledProcessError:
                missing.append(f"{env}/{cell} (lewm-eval failed: {out / env / cell}.log)")
            except FileNotFoundError:
                missing.append(f"{env}/{cell} (not run)")
        if args.evals_only or not results:
            continue
        cache = out / env / "latency.json"  # reused while the same cells are reported
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if sorted(cached.get("times", {})) == sorted(results) and cached.get("rounds") == args.rounds:
            times = cached["times"]
        else:
            times = interleaved_latency(env, list(results), out, args.rounds)
            cache.write_text(json.dumps({"rounds": args.rounds, "times": times}))
        for cell, res in results.items():
            lo, hi = wilson(res["successes"], res["episodes"])
            rows.append({"env": env, "cell": cell, "planner": CELLS[cell][0], "successes": res["successes"],
                         "episodes": res["episodes"], "success_rate": res["success_rate"], "ci95": [lo, hi],
                         "latency_median_s": median(times[cell]), "latency_s": times[cell],
                         "eval_latency_median_s": res["plan_latency_median_s"], "decisions": res["plans"],
                         "planner_config": res["planner"]})
    if args.evals_only:
        return
    import torch

    stamp = date.today().isoformat()
    results_dir = ROOT / args.results
    results_dir.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp, "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1_5_15min_at_report": list(os.getloadavg()),
            "protocol": "lewm-eval defaults: 50 episodes, dataset goals from the run's held-out episodes, goal_offset "
                        "25, budget 50, history_len 1, seed 100000; latency: median of --rounds interleaved act() calls",
            "rounds": args.rounds, "rows": rows, "missing": missing}
    (results_dir / f"planner-frontier-{stamp}.json").write_text(json.dumps(meta, indent=1))
    lines = ["| env | planner | success | 95 % CI | median ms / decision (interleaved) | median ms (in eval) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["ci95"]
        partial = "" if r["episodes"] == 50 else f" (the first {r['episodes']} of the 50 goals)"
        lines.append(f"| {r['env']} | {r['planner']} | {r['successes']}/{r['episodes']}{partial} | {100 * lo:.0f}–{100 * hi:.0f} % "
                     f"| {1e3 * r['latency_median_s']:.1f} | {1e3 * r['eval_latency_median_s']:.1f} |")
    text = "\n".join(lines) + ("\n\nmissing: " + "; ".join(missing) if missing else "") + "\n"
    (results_dir / f"planner-frontier-{stamp}.md").write_text(text)
    if rows:
        plot(rows, results_dir / f"planner-frontier-{stamp}.png")
    print(text)


if __name__ == "__main__":
    main()
