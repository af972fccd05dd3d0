"""``lewm-eval``: goal-conditioned MPC with the CEM planner in the environment a checkpoint was trained on (SPEC §4).

Hydra-style command line: ``key=value`` overrides of ``lewm_fast/configs/eval.yaml`` (planner group: cem, cpu_quick),
plus ``--cfg`` (print the composed config) and ``--help``.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

PROG = "lewm-eval"
GROUPS = {"planner": "eval/planner"}
DESCRIPTION = (
    "Plan with CEM in the environment: per episode the goal is the state goal_offset (25) env steps ahead, either in a\n"
    "random episode of an episode file (dataset=<file.h5>, lewm-collect's or stable-worldmodel's layout: a random step\n"
    "t, goal = step t + goal_offset) or on the env's scripted expert trajectory (dataset=null); receding-horizon MPC\n"
    "gets budget (50) env steps to reach it. Reports the success rate and the plan latency; writes <out>/results.json\n"
    "and a PNG strip + GIF of the first save_episodes episodes. A stable-worldmodel checkpoint (a folder without\n"
    "normalization.json, or an _object.ckpt file) needs env=<name> and dataset=<file>: its action statistics come\n"
    "from the dataset."
)
EXAMPLES = (
    "lewm-eval checkpoint=runs/quickstart planner=cpu_quick episodes=20 out=runs/quickstart/eval",
    "lewm-eval checkpoint=runs/pusht dataset=data/pusht.h5 episodes=50   # goals from the run's held-out episodes",
    "lewm-eval checkpoint=pusht/lewm_object.ckpt env=pusht dataset=pusht_expert_val.h5   # a stable-worldmodel run",
    "lewm-eval checkpoint=runs/quickstart planner.n_steps=10 planner.num_samples=200",
    "lewm-eval checkpoint=lewm_fast/assets/two_room planner=gd planner.lr=0.05   # gradient descent on the actions",
    "lewm-eval checkpoint=lewm_fast/assets/two_room planner=pgd planner.bins=5   # 5 values per action entry, in the box",
)


def plan_viewer(planner: Any, env_name: str, probe: Optional[str]) -> Any:
    """``viewer=true``'s ``ViewerFactory``: a ``lewm_fast.analysis.PlanRecorder`` of ``planner``, drawn in the plane
    of ``probe`` (a probe.json) or, without one, of the latent PCA."""
    from lewm_fast.analysis import LatentProjection, PlanRecorder

    plane = LatentProjection.from_probe(probe) if probe else None
    return PlanRecorder(planner, plane, env_name=env_name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lewm_fast.config import compose_config, format_help, one_line, parse_cli
    from lewm_fast.io import CheckpointError

    try:
        overrides, wants_help, wants_cfg = parse_cli(argv, {})
        if wants_help:
            print(format_help(PROG, DESCRIPTION, "eval", GROUPS, {}, EXAMPLES))
            return 0
        cfg = compose_config("eval", overrides, open_keys=("env_kwargs",))
        if wants_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        from lewm_fast.evaluation.runner import Evaluation

        evaluation = Evaluation(cfg, viewer=plan_viewer)
    except (ValueError, CheckpointError, HydraException, OmegaConfBaseException) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    summary = evaluation.run()
    p = summary["planner"]
    steps = p.get("n_steps", 1) * p.get("n_outer_steps", 1)  # predictive sampling: one round; Lagrangian: all rounds
    search = f", {p['num_samples']} samples x {steps} iterations" if "num_samples" in p else ""
    print(
        f"{summary['env']}: success {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.0f} % "
        f"(goal {summary['goal_offset']} steps ahead, budget {summary['budget']} steps)"
    )
    print(
        f"plan latency: mean {1e3 * summary['plan_latency_mean_s']:.1f} ms, median {1e3 * summary['plan_latency_median_s']:.1f} ms"
        f" over {summary['plans']} plans ({p['class']} on {summary['device']}, backend {p['backend']}{search})"
    )
    print(f"results: {summary['out']}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
