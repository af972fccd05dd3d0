"""Console scripts: ``lewm-fast`` (info), ``lewm-collect``, ``lewm-train``, ``lewm-eval``."""
