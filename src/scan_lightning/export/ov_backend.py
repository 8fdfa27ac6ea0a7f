"""The deployment form run by OpenVINO's CPU plugin (the optional ``openvino`` extra): the same ONNX parts as the
onnxruntime form (:class:`~scan_lightning.export.parts.ExportedParts`), each compiled once for a latency hint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from scan_lightning.export.formats import MANIFEST
from scan_lightning.export.parts import ExportedParts


def _core() -> Any:
    try:
        import openvino
    except ImportError as err:   # one clear message instead of a bare ModuleNotFoundError deep in a run
        raise ImportError("timing.deploy.openvino=true needs OpenVINO: pip install 'scan_lightning[openvino]'") from err
    return openvino.Core()


class OvNetwork(ExportedParts):
    """``net``'s sections and exits as ONNX graphs compiled by OpenVINO for its CPU plugin (threads: torch's,
    ``PERFORMANCE_HINT=LATENCY``, float32 kept)."""

    prefix = "scan_ov_"

    def _load(self, folder: Path) -> None:
        """Compile every part listed in the manifest."""
        core = _core()
        manifest = json.loads((folder / MANIFEST).read_text())
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}   # no bf16 / f16 down-casting: the answers stay the eager ones

        def compiled(entry: dict[str, Any]) -> Any:
            return core.compile_model(str(folder / entry["file"]), "CPU", config)

        self._sections = [(compiled(e), list(e["inputs"])) for e in manifest["sections"]]
        self._exits = [(compiled(e), list(e["inputs"]), bool(e["uses_previous"])) for e in manifest["exits"]]

    def _run(self, part: Any, feed: dict[str, Any]) -> list[torch.Tensor]:
        """The compiled model's outputs, copied out of OpenVINO's buffers (reused by the next call)."""
        result = part(feed)
        return [torch.from_numpy(result[out].copy()) for out in part.outputs]
