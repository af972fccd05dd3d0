"""Planning with and without action bounds (``planner.action_bounds=none|clip|penalty``), measured two ways.

``protocol``: ``lewm-eval`` with its protocol (dataset goals from the run's held-out episodes, goal 25 env steps
ahead, budget 50, history 1) per bounds mode, on a checkpoint; success with 95 % Wilson intervals.

``long-goals``: fixed Two-Room start -> goal pairs played as the browser page plays them (the agent at ``start``, the
goal frame rendered with the agent at ``goal``), with lewm-eval's planner (300 x 30, 5 blocks executed per plan) and
with the page's default planner (64 samples, 8 elites, 4 iterations, one block executed per plan); success within
``SUCCESS_DISTANCE`` px and the final position.

``first-plans``: one lewm-eval plan from each long goal's start per mode: its largest |action|, predicted cost and
direction (what an unbounded plan promises against what it does).

``report``: merge what finished into one JSON (machine, versions, date) and print Markdown tables::

    OMP_NUM_THREADS=1 python bench/action_bounds.py protocol --checkpoint lewm_fast/assets/two_room --name two_room
    OMP_NUM_THREADS=1 python bench/action_bounds.py protocol --checkpoint runs/four_envs/pusht/run --name pusht \
        --planner cpu_quick    # likewise reacher (the four-env runs, 2 epochs each)
    OMP_NUM_THREADS=1 python bench/action_bounds.py long-goals
    OMP_NUM_THREADS=1 python bench/action_bounds.py first-plans
    python bench/action_bounds.py report --results bench/results/action-bounds-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from four_envs import cpu_model, wilson  # noqa: E402

MODES = ("none", "clip", "penalty")
# (start agent x, y) -> (goal agent x, y) in Two-Room pixels: the README's browser case (through the door, y = 49), and
# the goals of issue 25 that need a detour around the wall (x = 112)
LONG_GOALS = {
    "browser 40,185 -> 185,40": ((40.0, 185.0), (185.0, 40.0)),
    "door 185,40 -> 40,185": ((185.0, 40.0), (40.0, 185.0)),
    "door 60,45 -> 170,55": ((60.0, 45.0), (170.0, 55.0)),
    "detour 40,185 -> 185,185": ((40.0, 185.0), (185.0, 185.0)),
    "detour 40,185 -> 160,120": ((40.0, 185.0), (160.0, 120.0)),
    "detour 150,200 -> 60,60": ((150.0, 200.0), (60.0, 60.0)),
}
PLANNERS = {  # name -> (eval overrides, env-step budget (the page's: 50 blocks), seeds, cases (None: all))
    "lewm-eval 300x30, 5 blocks/plan": (["planner=cem"], 250, 1, list(LONG_GOALS)[:4]),
    "page 64x8x4, 1 block/plan": (["planner.num_samples=64", "planner.topk=8", "planner.n_steps=4",
                                   "planner.receding_horizon=1"], 250, 3, None),
}


def protocol(args: argparse.Namespace) -> None:
    """lewm-eval per bounds mode on one checkpoint -> <out>/protocol-<name>-<mode>/results.json."""
    for mode in args.modes:
        out = Path(args.out) / f"protocol-{args.name}-{mode}"
        if (out / "results.json").is_file():
            continue
        cmd = [sys.executable, "-m", "lewm_fast.cli.evaluate", f"checkpoint={args.checkpoint}",
               f"planner={args.planner}", f"planner.action_bounds={mode}", f"episodes={args.episodes}", "save_episodes=0", f"out={out}",
               *args.overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"{args.name} {mode}: {time.perf_counter() - start:.0f} s", flush=True)


def long_goals(args: argparse.Namespace) -> None:
    """Every (planner, case, mode, seed) of LONG_GOALS x PLANNERS on the Two-Room checkpoint -> <out>/long-goals.json
    (rewritten after each episode, so a cut run keeps what finished)."""
    from lewm_fast.config import compose_config
    from lewm_fast.envs.two_room import SUCCESS_DISTANCE
    from lewm_fast.evaluation.mpc import run_episode
    from lewm_fast.evaluation.runner import Evaluation

    path = Path(args.out) / "long-goals.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["planner"], r["case"], r["mode"], r["seed"]) for r in rows}
    for planner, (overrides, budget, seeds, cases) in PLANNERS.items():
        if args.planners and planner not in args.planners:
            continue
        for mode in args.modes:
            cfg = compose_config("eval", [f"checkpoint={args.checkpoint}", f"planner.action_bounds={mode}", *overrides])
            ev = Evaluation(cfg, out_dir=Path(args.out) / "long-goals-unused")
            sim = ev.env.unwrapped
            for case, (start, goal) in LONG_GOALS.items():
                if cases is not None and case not in cases:
                    continue
                for seed in range(seeds if args.seeds is None else args.seeds):
                    if (planner, case, mode, seed) in done:
                        continue
                    start_state = np.array([*start, *goal])
                    goal_state = np.array([*goal, *goal])

                    def goals(s: int) -> tuple:
                        ev.env.reset(seed=s)
                        sim.set_state(start_state)
                        return start_state.copy(), goal_state.copy()

                    ev.planner.reseed(seed)
                    t0 = time.perf_counter()
                    r = run_episode(ev.env, goals, ev.planner, ev.model, ev.codec, episode=seed, seed=seed,
                                    budget=budget, history_len=1)
                    final = np.asarray(sim.get_state()[:2], dtype=float)
                    rows.append({"planner": planner, "case": case, "mode": mode, "seed": seed, "success": r.success,
                                 "steps": r.steps, "budget_env_steps": budget, "plans": len(r.plan_latencies_s),
                                 "final_xy": np.round(final, 1).tolist(),
                                 "final_distance_px": round(float(np.linalg.norm(final - np.array(goal))), 1),
                                 "success_distance_px": SUCCESS_DISTANCE,
                                 "seconds": round(time.perf_counter() - t0, 1)})
                    path.write_text(json.dumps(rows, indent=1))
                    print(rows[-1], flush=True)


def first_plans(args: argparse.Namespace) -> None:
    """One lewm-eval plan (300 x 30) from the start of every LONG_GOALS case per bounds mode -> <out>/first-plans.json:
    the plan's largest normalised |action|, its predicted cost (best elite of the last iteration) and where its first
    5 blocks would move the agent (the env actions clipped to the box, summed, times the env's speed; no walls)."""
    import torch

    from lewm_fast.config import compose_config
    from lewm_fast.evaluation.mpc import render_state
    from lewm_fast.evaluation.runner import Evaluation
    from lewm_fast.reference.vit import preprocess_frames

    rows = []
    for mode in args.modes:
        ev = Evaluation(compose_config("eval", [f"checkpoint={args.checkpoint}", f"planner.action_bounds={mode}"]),
                        out_dir=Path(args.out) / "first-plans-unused")
        sim, box = ev.env.unwrapped, ev.env.action_space
        for case, (start, goal) in LONG_GOALS.items():
            ev.env.reset(seed=0)
            sim.set_state(np.array([*start, *goal]))
            obs = preprocess_frames(torch.from_numpy(np.array(ev.env.render()))).unsqueeze(0).unsqueeze(0)
            goal_frame = render_state(ev.env, np.array([*goal, *goal]))
            ev.planner.reseed(0)
            plan, diag = ev.planner.plan(obs, preprocess_frames(torch.from_numpy(goal_frame)).unsqueeze(0),
                                         return_diagnostics=True)
            moves = np.clip(np.stack([ev.codec.to_env(b) for b in plan[0]]), box.low, box.high).reshape(-1, 2)
            rows.append({"case": case, "mode": mode, "max_abs_normalised_action": round(float(plan.abs().max()), 2),
                         "predicted_cost": round(float(diag.elite_costs[-1][0, 0]), 2),
                         "move_px": np.round(moves.sum(0) * sim.speed, 1).tolist()})
            print(rows[-1], flush=True)
    (Path(args.out) / "first-plans.json").write_text(json.dumps(rows, indent=1))


def report(args: argparse.Namespace) -> None:
    """Merge <out>/protocol-*/results.json and every long-goals.json under <out> -> args.results; print Markdown
    tables."""
    import torch

    out = Path(args.out)
    protocol_rows = []
    for res in sorted(out.glob("protocol-*/results.json")):
        r = json.loads(res.read_text())
        name, mode = res.parent.name[len("protocol-"):].rsplit("-", 1)
        lo, hi = wilson(r["successes"], r["episodes"])
        p = r["planner"]
        protocol_rows.append({"model": name, "env": r["env"], "checkpoint": r["checkpoint"], "action_bounds": mode,
                              "planner": f"{p['num_samples']}x{p['n_steps']} (topk {p['topk']}, horizon "
                                         f"{p['horizon']}, receding {p['receding_horizon']})",
                              "successes": r["successes"], "episodes": r["episodes"], "success_rate": r["success_rate"],
                              "ci95": [lo, hi], "mean_steps_successful": r["mean_steps_successful"],
                              "plan_latency_median_s": r["plan_latency_median_s"], "seed": r["seed"]})
    unique = {(r["planner"], r["case"], r["mode"], r["seed"]): r
              for path in sorted(out.rglob("long-goals.json")) for r in json.loads(path.read_text())}
    plans_path = out / "first-plans.json"
    first_plan_rows = json.loads(plans_path.read_text()) if plans_path.is_file() else []
    goal_rows = sorted(unique.values(), key=lambda r: (r["planner"], list(LONG_GOALS).index(r["case"]),
                                                       MODES.index(r["mode"]), r["seed"]))
    summary = {
        "date": date.today().isoformat(), "cpu": cpu_model(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": "OMP_NUM_THREADS=1, 2-core machine shared with other jobs",
        "protocol": "lewm-eval: dataset goals (held-out episodes), goal_offset 25, budget 50 env steps, history_len 1",
        "long_goals": "Two-Room, agent at start, goal frame with the agent at goal; success = within 16 px",
        "command": "bench/action_bounds.py (module doc)", "protocol_rows": protocol_rows, "long_goal_rows": goal_rows,
        "first_plan_rows": first_plan_rows,
    }
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(summary, indent=1))
    print("| model | planner | action_bounds | success (95 % CI) | mean steps (successes) |\n"
          "| --- | --- | --- | --- | --- |")
    for r in protocol_rows:
        lo, hi = r["ci95"]
        steps = "-" if r["mean_steps_successful"] is None else f"{r['mean_steps_successful']:.1f}"
        print(f"| {r['model']} | {r['planner']} | {r['action_bounds']} | {r['successes']}/{r['episodes']} = "
              f"{100 * r['success_rate']:.0f} % ({100 * lo:.0f}–{100 * hi:.0f} %) | {steps} |")
    print("\n| planner | case | action_bounds | reached | final position (px from goal) |\n"
          "| --- | --- | --- | --- | --- |")
    groups: Dict[tuple, list] = {}
    for r in goal_rows:
        groups.setdefault((r["planner"], r["case"], r["mode"]), []).append(r)
    for (planner, case, mode), rs in groups.items():
        finals = ", ".join(f"({x:.0f},{y:.0f}) {r['final_distance_px']:.0f}" for r in rs for x, y in [r["final_xy"]])
        print(f"| {planner} | {case} | {mode} | {sum(r['success'] for r in rs)}/{len(rs)} | {finals} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("protocol", "long-goals", "first-plans", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", default="runs/bounds")
        p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
        p.add_argument("--checkpoint", default="lewm_fast/assets/two_room")
    sub.choices["protocol"].add_argument("--name", default="two_room")
    sub.choices["protocol"].add_argument("--planner", default="cem", help="lewm-eval planner preset")
    sub.choices["protocol"].add_argument("--episodes", type=int, default=50)
    sub.choices["protocol"].add_argument("--overrides", nargs="*", default=[], help="extra lewm-eval key=value")
    sub.choices["long-goals"].add_argument("--seeds", type=int, default=None, help="seeds per case (default: 1 / 3)")
    sub.choices["long-goals"].add_argument("--planners", nargs="*", default=None, choices=list(PLANNERS),
                                           help="only these (default: all)")
    sub.choices["report"].add_argument("--results", default=None, help="write the merged JSON here")
    args = parser.parse_args()
    {"protocol": protocol, "long-goals": long_goals, "first-plans": first_plans, "report": report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
