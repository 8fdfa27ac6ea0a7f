"""Self-contained artefacts of the early-exit network (TorchScript, ONNX + runner) and the onnxruntime backend.

``python -m scan_lightning.export`` runs the export command (:mod:`scan_lightning.cli.export`).
"""
from scan_lightning.export.backends import deploy
from scan_lightning.export.formats import build_torchscript, export_onnx, export_torchscript, load_torchscript
from scan_lightning.export.onnx_runner import OnnxEarlyExit
from scan_lightning.export.ort_backend import OrtNetwork

__all__ = ["OnnxEarlyExit", "OrtNetwork", "build_torchscript", "deploy", "export_onnx", "export_torchscript",
           "load_torchscript"]
