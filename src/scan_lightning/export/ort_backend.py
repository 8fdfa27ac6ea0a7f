"""The deployment form on onnxruntime: every section and exit exported to ONNX, run by ORT sessions.

It offers the interface of :class:`~scan_lightning.runtime.forms.DeployedNetwork` (``prepare``, ``section``,
``exit``, ``deep``, ``plain``, ``all_exits``), so the same :class:`EarlyExitRunner` routing (compaction,
fallback) and the same timing code drive it; tensors cross to and from ORT without copies. At batch 1 it
removes most of eager PyTorch's per-layer overhead. Needs the ``deploy`` extra (onnx, onnxruntime).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from scan_lightning.cost.macs import CostTable
from scan_lightning.export.formats import export_onnx
from scan_lightning.export.onnx_runner import OnnxEarlyExit
from scan_lightning.models.multi_exit import SectionOutput
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.runtime.backend import run_all_exits, run_plain
from scan_lightning.runtime.forms import DeployedNetwork


class OrtNetwork:
    """``net``'s sections and exits as ONNX graphs on onnxruntime's CPU provider (threads: torch's)."""

    def __init__(self, net: DeployedNetwork, costs: CostTable, directory: str | Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="scan_ort_")
            directory = self._tmp.name
        folder = Path(directory)
        export_onnx(net, ExitPolicy.create([1.0] * net.num_exits), costs, folder, exporter="legacy")
        runner = OnnxEarlyExit(folder, threads=torch.get_num_threads(), spinning=False)
        self._sections, self._exits = runner.sections, runner.exits
        self.num_exits, self.num_classes, self.isc = net.num_exits, net.num_classes, net.isc
        self.options = net.options
        self.device = torch.device("cpu")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input detached, as a contiguous float32 CPU tensor (what the ONNX sessions read)."""
        return x.detach().to("cpu", torch.float32).contiguous()

    def section(self, i: int, h: SectionOutput) -> list[torch.Tensor]:
        """Section ``i``'s output maps for its input (a tensor or the per-scale list), run by its ONNX session."""
        session, names, _ = self._sections[i]
        maps = h if isinstance(h, (list, tuple)) else [h]
        outs = session.run(None, {n: t.contiguous().numpy() for n, t in zip(names, maps)})
        return [torch.from_numpy(o) for o in outs]

    def exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None) -> torch.Tensor:
        """Exit ``i``'s logits from section ``i``'s output; ``previous`` (exit ``i - 1``'s logits) is fed where the exit
        has an ISC input."""
        session, names, uses_previous = self._exits[i]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            if previous is None:
                raise ValueError(f"exit {i} needs the previous exit's logits (ISC)")
            feed[names[1]] = previous.contiguous().numpy()
        return torch.from_numpy(session.run(None, feed)[0])

    def deep(self, h: SectionOutput) -> torch.Tensor:
        """The deepest exit's graph (with ISC it is fed zeros for the previous logits)."""
        session, names, uses_previous = self._exits[-1]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            feed[names[1]] = torch.zeros(coarsest.shape[0], self.num_classes).numpy()
        return torch.from_numpy(session.run(None, feed)[0])

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network (:func:`~scan_lightning.runtime.backend.run_plain`, the rule of every backend)."""
        return run_plain(self, x)

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample."""
        return run_all_exits(self, x)
