"""Console scripts: ``lewm-fast`` (info, demo, aot, export-onnx, web), ``lewm-collect``, ``lewm-train``, ``lewm-eval``,
``lewm-data``, ``lewm-analyze``."""
