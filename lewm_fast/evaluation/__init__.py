"""Goal-conditioned MPC evaluation (``lewm-eval``): held-out goals (from an episode file or the scripted expert), CEM
receding-horizon control, success rate, plan latency, episode pictures."""

from .media import save_gif, save_strip
from .mpc import ActionCodec, DatasetGoals, EpisodeResult, ExpertGoals, render_state, run_episode, summarize
from .runner import Evaluation, build_planner, evaluate, validate_eval_config

__all__ = [
    "ActionCodec", "DatasetGoals", "EpisodeResult", "Evaluation", "ExpertGoals", "build_planner", "evaluate",
    "render_state", "run_episode", "save_gif", "save_strip", "summarize", "validate_eval_config",
]
