"""Goal-conditioned MPC evaluation (``lewm-eval``): held-out goals (from an episode file or the scripted expert), CEM
receding-horizon control, success rate, plan latency, episode pictures."""

from ..data import ActionCodec
from .media import save_gif, save_strip
from .mpc import DatasetGoals, EpisodeResult, ExpertGoals, render_state, run_episode, summarize
from .planners import PLANNERS, PlannerInputs, build_planner
from .runner import EpisodeViewer, Evaluation, ViewerFactory, evaluate, validate_eval_config

__all__ = [
    "ActionCodec", "DatasetGoals", "EpisodeResult", "EpisodeViewer", "Evaluation", "ExpertGoals", "PLANNERS",
    "PlannerInputs", "ViewerFactory",
    "build_planner", "evaluate", "render_state", "run_episode", "save_gif", "save_strip", "summarize",
    "validate_eval_config",
]
