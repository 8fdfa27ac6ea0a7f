"""The deployment form run by OpenVINO's CPU plugin (the optional ``openvino`` extra): the same ONNX parts as the
onnxruntime form, each compiled once for a latency hint, behind the runtime's ``Backend`` protocol."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from scan_lightning.cost.macs import CostTable
from scan_lightning.export.formats import MANIFEST, export_onnx
from scan_lightning.models.multi_exit import SectionOutput
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.runtime.backend import run_all_exits, run_plain
from scan_lightning.runtime.forms import DeployedNetwork


def _core() -> Any:
    try:
        import openvino
    except ImportError as err:   # one clear message instead of a bare ModuleNotFoundError deep in a run
        raise ImportError("timing.deploy.openvino=true needs OpenVINO: pip install 'scan_lightning[openvino]'") from err
    return openvino.Core()


class OvNetwork:
    """``net``'s sections and exits as ONNX graphs compiled by OpenVINO for its CPU plugin (threads: torch's,
    ``PERFORMANCE_HINT=LATENCY``, float32 kept); inputs and outputs cross as numpy arrays, as on onnxruntime."""

    def __init__(self, net: DeployedNetwork, costs: CostTable, directory: str | Path | None = None) -> None:
        core = _core()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="scan_ov_")
            directory = self._tmp.name
        folder = Path(directory)
        export_onnx(net, ExitPolicy.create([1.0] * net.num_exits), costs, folder, exporter="legacy")
        manifest = json.loads((folder / MANIFEST).read_text())
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}   # no bf16 / f16 down-casting: the answers stay the eager ones

        def compiled(entry: dict[str, Any]) -> Any:
            return core.compile_model(str(folder / entry["file"]), "CPU", config)

        self._sections = [(compiled(e), e["inputs"]) for e in manifest["sections"]]
        self._exits = [(compiled(e), e["inputs"], bool(e["uses_previous"])) for e in manifest["exits"]]
        self.num_exits, self.num_classes, self.isc = net.num_exits, net.num_classes, net.isc
        self.options = net.options
        self.device = torch.device("cpu")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input detached, as a contiguous float32 CPU tensor."""
        return x.detach().to("cpu", torch.float32).contiguous()

    @staticmethod
    def _run(model: Any, feed: dict[str, Any]) -> list[torch.Tensor]:
        result = model(feed)
        return [torch.from_numpy(result[out].copy()) for out in model.outputs]

    def section(self, i: int, h: SectionOutput) -> list[torch.Tensor]:
        """Section ``i``'s output maps for its input (a tensor or the per-scale list)."""
        model, names = self._sections[i]
        maps = h if isinstance(h, (list, tuple)) else [h]
        return self._run(model, {n: t.contiguous().numpy() for n, t in zip(names, maps)})

    def exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None) -> torch.Tensor:
        """Exit ``i``'s logits; ``previous`` (exit ``i - 1``'s logits) is fed where the exit reads it."""
        model, names, uses_previous = self._exits[i]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            if previous is None:
                raise ValueError(f"exit {i} needs the previous exit's logits (ISC)")
            feed[names[1]] = previous.contiguous().numpy()
        return self._run(model, feed)[0]

    def deep(self, h: SectionOutput) -> torch.Tensor:
        """The deepest exit's graph alone (fed zeros for the previous logits where it has that input)."""
        model, names, uses_previous = self._exits[-1]
        coarsest = h[-1] if isinstance(h, (list, tuple)) else h
        feed = {names[0]: coarsest.contiguous().numpy()}
        if uses_previous:
            feed[names[1]] = torch.zeros(coarsest.shape[0], self.num_classes).numpy()
        return self._run(model, feed)[0]

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network (:func:`~scan_lightning.runtime.backend.run_plain`)."""
        return run_plain(self, x)

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample."""
        return run_all_exits(self, x)
