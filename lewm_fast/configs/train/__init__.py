"""Config groups of ``lewm-train``: model, data, optim, preset (added to hydra's search path by train.yaml)."""
