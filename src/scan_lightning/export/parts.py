"""What the onnxruntime and OpenVINO forms share: a network's ONNX parts (exported once into a folder) behind the
runtime's ``Backend`` protocol, written over one primitive each engine supplies, ``_run(part, feed)``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from scan_lightning.cost.macs import CostTable
from scan_lightning.export.formats import export_onnx
from scan_lightning.models.multi_exit import SectionOutput
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.runtime.backend import run_all_exits, run_plain
from scan_lightning.runtime.forms import DeployedNetwork


class ExportedParts:
    """Sections and exits as ONNX graphs run by an inference engine on the CPU; inputs and outputs cross as numpy
    arrays. Subclasses load the parts (:meth:`_load`) and run one (:meth:`_run`)."""

    prefix = "scan_parts_"

    def __init__(self, net: DeployedNetwork, costs: CostTable, directory: str | Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix)
            directory = self._tmp.name
        folder = Path(directory)
        export_onnx(net, ExitPolicy.create([1.0] * net.num_exits), costs, folder, exporter="legacy")
        self._sections: list[tuple[Any, list[str]]] = []
        self._exits: list[tuple[Any, list[str], bool]] = []
        self._load(folder)
        self.num_exits, self.num_classes, self.isc = net.num_exits, net.num_classes, net.isc
        self.options = net.options
        self.device = torch.device("cpu")

    def _load(self, folder: Path) -> None:
        """Fill ``_sections`` ((part, input names)) and ``_exits`` ((part, input names, reads the previous logits))
        from the exported folder; subclasses implement it."""
        raise NotImplementedError

    def _run(self, part: Any, feed: dict[str, Any]) -> list[torch.Tensor]:
        """Run one part on numpy inputs by name; its outputs as tensors, in order. Subclasses implement it."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input detached, as a contiguous float32 CPU tensor (what the parts read)."""
        return x.detach().to("cpu", torch.float32).contiguous()

    def section(self, i: int, h: SectionOutput) -> list[torch.Tensor]:
        """Section ``i``'s output maps for its input (a tensor or the per-scale list)."""
        part, names = self._sections[i]
        maps = h if isinstance(h, (list, tuple)) else [h]
        return self._run(part, {n: t.contiguous().numpy() for n, t in zip(names, maps)})

    def exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None) -> torch.Tensor:
        """Exit ``i``'s logits from section ``i``'s output; ``previous`` (exit ``i - 1``'s logits) is fed where the exit
        reads it (ISC, ZTW's cascade)."""
        part, names, uses_previous = self._exits[i]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            if previous is None:
                raise ValueError(f"exit {i} needs the previous exit's logits (ISC)")
            feed[names[1]] = previous.contiguous().numpy()
        return self._run(part, feed)[0]

    def deep(self, h: SectionOutput) -> torch.Tensor:
        """The deepest exit's graph alone (fed zeros for the previous logits where it has that input)."""
        part, names, uses_previous = self._exits[-1]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            feed[names[1]] = torch.zeros(coarsest.shape[0], self.num_classes).numpy()
        return self._run(part, feed)[0]

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network (:func:`~scan_lightning.runtime.backend.run_plain`, the rule of every backend)."""
        return run_plain(self, x)

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample."""
        return run_all_exits(self, x)
