"""Config groups of ``lewm-eval``: planner (added to hydra's search path by eval.yaml)."""
