"""The deployment form on onnxruntime: every section and exit exported to ONNX, run by ORT sessions.

It offers the interface of :class:`~scan_lightning.runtime.forms.DeployedNetwork` (``prepare``, ``section``,
``exit``, ``deep``, ``plain``, ``all_exits``; :class:`~scan_lightning.export.parts.ExportedParts`), so the same
:class:`EarlyExitRunner` routing (compaction, fallback) and the same timing code drive it; tensors cross to and from
ORT without copies. At batch 1 it removes most of eager PyTorch's per-layer overhead. Needs the ``deploy`` extra
(onnx, onnxruntime).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scan_lightning.export.onnx_runner import OnnxEarlyExit
from scan_lightning.export.parts import ExportedParts


class OrtNetwork(ExportedParts):
    """``net``'s sections and exits as ONNX graphs on onnxruntime's CPU provider (threads: torch's)."""

    prefix = "scan_ort_"

    def _load(self, folder: Path) -> None:
        """One ORT session per part (the ONNX runner's, without busy-waiting threads)."""
        runner = OnnxEarlyExit(folder, threads=torch.get_num_threads(), spinning=False)
        self._sections = [(session, names) for session, names, _ in runner.sections]
        self._exits = list(runner.exits)

    def _run(self, part: Any, feed: dict[str, Any]) -> list[torch.Tensor]:
        """The session's outputs, as tensors over ORT's arrays (no copy)."""
        return [torch.from_numpy(o) for o in part.run(None, feed)]
