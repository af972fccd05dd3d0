"""Goal-conditioned MPC evaluation (``lewm-eval``): held-out goals, CEM receding-horizon control, success rate,
plan latency, episode pictures."""

from .media import save_gif, save_strip
from .mpc import ActionCodec, EpisodeResult, held_out_goal, render_state, run_episode, summarize
from .runner import Evaluation, build_planner, evaluate, validate_eval_config

__all__ = [
    "ActionCodec", "EpisodeResult", "Evaluation", "build_planner", "evaluate", "held_out_goal", "render_state",
    "run_episode", "save_gif", "save_strip", "summarize", "validate_eval_config",
]
