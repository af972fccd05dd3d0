"""Export a trained LeWM for use outside PyTorch: ONNX graphs of its encoder and its CEM cost (``export_onnx``)."""

from .onnx import ExportError, export_onnx, read_manifest

__all__ = ["ExportError", "export_onnx", "read_manifest"]
