"""Hydra configs of the lewm_fast command-line tools (``lewm-train``, ``lewm-eval``, ``lewm-collect``)."""
