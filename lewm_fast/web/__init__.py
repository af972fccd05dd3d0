"""The web demo: a static click-to-plan page for Two-Room running the exported model with onnxruntime-web."""

from .site import build_site, cache_folder, default_checkpoint, make_server

__all__ = ["build_site", "cache_folder", "default_checkpoint", "make_server"]
