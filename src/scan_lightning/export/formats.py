"""Export a multi-exit network with its exit policy to TorchScript or ONNX, keeping real early exit.

TorchScript: one file. Every section and every exit is traced on its own, behind one interface (a section
takes and returns ``list[Tensor]``, the maps of a multi-scale network or one tensor; an exit takes that
list and the previous exit's logits, used only with ISC), and a scripted wrapper walks them with batch
compaction: after each exit only the undecided samples run the next section, so a batch of one simply
stops. ``forward(x)`` returns ``(prediction, exit_index, macs, confidence)`` like
:class:`~scan_lightning.runtime.early_exit.EarlyExitRunner`; ``torch.jit.load`` alone runs it.

ONNX: one graph per section and per exit (batch axis dynamic) and ``manifest.json``; the runner
:class:`~scan_lightning.export.onnx_runner.OnnxEarlyExit` walks them the same way on onnxruntime.

These functions export the network they are given: a :class:`MultiExitNetwork` (e.g. ``fold_batchnorm(net)``)
or one in deployment form (``deploy(net)``, a :class:`DeployedNetwork`: BN folded, attention gated in place,
patchify convs as GEMMs, channels-last; the TorchScript file then converts its input to channels-last itself).
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from scan_lightning.cost.macs import CostTable
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.runtime.forms import DeployedNetwork
from scan_lightning.utils.modes import eval_mode

Network = MultiExitNetwork | DeployedNetwork

TORCHSCRIPT_META = "scan_lightning.json"   # name of the metadata entry among the file's _extra_files
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ONNX_EXPORTERS = ("dynamo", "legacy")
PRESERVED = ["thresholds", "temperatures", "fallback", "ensemble_fallback", "skipped", "exit_macs", "input_shape",
             "num_exits", "num_classes", "metadata", "channels_last", "rule"]
EXAMPLE_BATCH = 2                         # trace/export batch: > 1 so nothing specialises to a single sample


def export_metadata(net: Network, policy: ExitPolicy, costs: CostTable,
                    class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """What an exported artefact carries besides its graphs: policy, cost table, input shape, classes (and their
    names when the training data had them)."""
    policy = policy.for_exits(net.num_exits)
    if len(costs.exits) != net.num_exits:
        raise ValueError(f"the cost table has {len(costs.exits)} exits but the network has {net.num_exits}")
    skipped = policy.skipped_heads(chained=net.isc is not None)
    return {
        "format_version": FORMAT_VERSION,
        "num_exits": net.num_exits,
        "num_classes": int(net.num_classes),
        "input_shape": [int(s) for s in costs.input_shape],
        "isc": net.isc,
        "policy": policy.to_dict(),
        "costs": costs.to_dict(),
        # paid at exit 0..K-1, then at the fallback (every section); exit branches the policy skips are not run
        "skipped_heads": skipped,
        "exit_macs": costs.exit_macs(torch.tensor(skipped)).tolist(),
        **({"class_names": [str(c) for c in class_names]} if class_names else {}),
    }


# --- one interface for every section and exit ------------------------------------------------------------
class SectionStep(nn.Module):
    """A section behind ``list[Tensor] -> list[Tensor]`` (one tensor, or the per-scale maps of MSDNet)."""

    def __init__(self, section: nn.Module, takes_list: bool) -> None:
        super().__init__()
        self.section = section
        self.takes_list = takes_list

    def forward(self, h: list[Tensor]) -> list[Tensor]:
        """Run the section on the maps (or on the single tensor, for a section that takes one) and return its output as
        a list."""
        out = self.section(list(h) if self.takes_list else h[0])
        return list(out) if isinstance(out, (list, tuple)) else [out]


class ExitStep(nn.Module):
    """An exit behind ``(list[Tensor], previous logits) -> logits``; it reads the last (coarsest) map and uses
    ``previous`` only when the exit has an ISC input."""

    def __init__(self, branch: nn.Module, uses_previous: bool) -> None:
        super().__init__()
        self.branch = branch
        self.uses_previous = uses_previous

    def forward(self, h: list[Tensor], previous: Tensor) -> Tensor:
        """The exit's logits from the last map of ``h``; ``previous`` reaches the exit only when it has an ISC input."""
        return self.branch(h[-1], previous if self.uses_previous else None)[0]


class _OnnxSection(nn.Module):
    """A section as ONNX sees it: positional tensors in, a tuple of tensors out."""

    def __init__(self, step: SectionStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, *h: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.step(list(h)))


class _OnnxExit(nn.Module):
    """An exit as ONNX sees it: the coarsest map, and the previous logits only where ISC reads them."""

    def __init__(self, step: ExitStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, h: Tensor, previous: Tensor | None = None) -> Tensor:
        return self.step([h], previous if previous is not None else h)


def _clone(h: list[Tensor]) -> list[Tensor]:
    return [t.clone() for t in h]


def _branch(net: Network, i: int) -> nn.Module:
    """Exit ``i`` as one module ``(h, previous) -> (logits, feature)``: ``net.exit_branch(i)``, or the ``exits``
    of a network already in deployment form."""
    return net.exit_branch(i) if isinstance(net, MultiExitNetwork) else net.exits[i]


def _channels_last(net: nn.Module) -> bool:
    """Whether a network in deployment form wants channels-last input (``DeployedNetwork.options``)."""
    return bool(getattr(getattr(net, "options", None), "channels_last", False))


def _steps(net: Network, example: Tensor) -> tuple[list[SectionStep], list[ExitStep], list[list[Tensor]],
                                                             list[Tensor]]:
    """The section and exit steps, and each section's example input and each exit's example logits."""
    sections, exits, inputs, logits = [], [], [], []
    h: list[Tensor] = [example]
    previous = torch.zeros(0, device=example.device)
    takes_list = False
    with torch.no_grad():
        for i, section in enumerate(net.sections):
            step = SectionStep(section, takes_list).eval()
            inputs.append(_clone(h))                     # kept safe from in-place ops of later modules
            out = section(list(h) if takes_list else h[0])
            takes_list = isinstance(out, (list, tuple))  # the next section reads what this one returns
            h = list(out) if takes_list else [out]
            branch = _branch(net, i)
            exit_step = ExitStep(branch, getattr(branch, "isc", None) is not None).eval()
            previous = exit_step(_clone(h), previous)
            sections.append(step)
            exits.append(exit_step)
            logits.append(previous)
    return sections, exits, inputs, logits


def _close(a: Sequence[Tensor] | Tensor, b: Sequence[Tensor] | Tensor) -> bool:
    a = [a] if isinstance(a, Tensor) else list(a)
    b = [b] if isinstance(b, Tensor) else list(b)
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-4)
                                    for x, y in zip(a, b))


# --- TorchScript ----------------------------------------------------------------------------------------
class ScriptedEarlyExit(nn.Module):
    """Sections and exits (traced) walked with batch compaction, as ``EarlyExitRunner`` does.

    The exit decision is the policy's :class:`~scan_lightning.policy.rules.RuleScore` (submodule ``scorer``,
    scripted with the wrapper): at exit i it scores the undecided samples from the logits of exits 0..i (only exit
    i's when the rule reads no earlier exit), and that history is compacted with the samples. ``rule`` holds the
    rule's name. ``forward(x)`` -> ``(prediction, exit_index, macs, confidence)``: class per sample, exit taken
    (0..K-1, K = fallback), MACs paid (float64) and the rule's score of the answer (the fallback's max softmax at 1).
    """

    if TYPE_CHECKING:   # a buffer (registered in __init__); a class annotation would reach torch.jit.script
        exit_macs: Tensor

    def __init__(self, sections: Sequence[nn.Module], exits: Sequence[nn.Module], policy: ExitPolicy,
                 exit_macs: Sequence[float], input_shape: Sequence[int], num_classes: int, metadata: str,
                 channels_last: bool = False, skipped: Sequence[bool] | None = None) -> None:
        super().__init__()
        self.sections = nn.ModuleList(sections)
        self.exits = nn.ModuleList(exits)
        self.num_exits = len(self.exits)
        self.num_classes = int(num_classes)
        self.thresholds = [float(t) for t in policy.thresholds]
        self.temperatures = [float(t) for t in policy.temperatures]
        self.fallback = policy.fallback
        self.ensemble_fallback = policy.fallback == "ensemble"
        self.rule = policy.rule.name
        self.reads_history = policy.rule.reads_history
        self.scorer = policy.scorer()                         # scripted along with the wrapper
        self.skipped = [bool(b) for b in skipped] if skipped is not None else [False] * len(self.exits)
        self.input_shape = [int(s) for s in input_shape]
        self.metadata = metadata                              # the same JSON as the file's extra entry
        self.channels_last = channels_last                    # the parts were made for channels-last input
        self.register_buffer("exit_macs", torch.tensor(list(exit_macs), dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Early-exit inference on a batch ``x`` of ``input_shape``: ``(prediction, exit_index, macs, confidence)`` per
        sample, as the class describes; ValueError for another shape."""
        if x.dim() != len(self.input_shape) + 1 or list(x.shape[1:]) != self.input_shape:
            raise ValueError("input must be a batch of shape (N, " + str(self.input_shape)[1:-1]
                             + "), got " + str(list(x.shape)))
        with torch.no_grad():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            n = x.shape[0]
            k = self.num_exits
            prediction = torch.zeros(n, dtype=torch.long, device=x.device)
            confidence = torch.zeros(n, dtype=torch.float, device=x.device)
            exit_index = torch.full((n,), k, dtype=torch.long, device=x.device)
            alive = torch.arange(n, device=x.device)           # original indices of undecided samples
            h: list[Tensor] = [x]
            logits = torch.zeros(0, device=x.device)
            logit_sum = torch.zeros(0, device=x.device)
            history: list[Tensor] = []                          # the logits the rule reads: every exit's, or the last
            for i, (section, exit_step) in enumerate(zip(self.sections, self.exits)):
                if alive.numel() > 0:
                    h = section(h)
                if alive.numel() > 0 and not self.skipped[i]:      # a skipped branch: no decision reads it
                    logits = exit_step(h, logits)
                    logit_sum = logits if logit_sum.numel() == 0 else logit_sum + logits
                    if self.reads_history:
                        history.append(logits)
                    else:
                        history = [logits]
                    conf, pred = self.scorer(i, history)
                    fire = conf > self.thresholds[i]
                    if bool(fire.any()):
                        gone = alive[fire]
                        prediction[gone] = pred[fire]
                        confidence[gone] = conf[fire]
                        exit_index[gone] = i
                        keep = ~fire
                        alive = alive[keep]
                        h = [t[keep] for t in h]
                        logit_sum = logit_sum[keep]
                        logits = logits[keep]
                        history = [t[keep] for t in history]
            if alive.numel() > 0:
                last = logit_sum / k if self.ensemble_fallback else logits
                conf, pred = torch.softmax(last.float(), dim=-1).max(dim=-1)
                prediction[alive] = pred
                confidence[alive] = conf
            return prediction, exit_index, self.exit_macs[exit_index], confidence


def _trace(module: nn.Module, args: tuple) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, args, strict=False, check_trace=False)


def build_torchscript(net: Network, policy: ExitPolicy, costs: CostTable, freeze: bool = True,
                      optimize: bool = False, class_names: Sequence[str] | None = None,
                      ) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted early-exit module and its metadata (see :func:`export_torchscript`).

    ``optimize``: also ``torch.jit.optimize_for_inference`` (MKLDNN layouts on CPU), kept only if it answers an
    example like the frozen module. Such a module runs but cannot be saved and loaded again (torch 2.14: its
    MKLDNN constants do not serialise), so :func:`export_torchscript` never applies it; apply it after
    ``torch.jit.load`` if it helps on your machine.
    """
    meta = export_metadata(net, policy, costs, class_names)
    with eval_mode(net):
        device = next(net.parameters()).device
        example = torch.randn(EXAMPLE_BATCH, *costs.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
        if _channels_last(net) and example.dim() == 4:
            example = example.contiguous(memory_format=torch.channels_last)
        sections, exits, inputs, logits = _steps(net, example)
        traced_sections, traced_exits = [], []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)      # torch 2.9+: "torch.jit.* is deprecated"
            for i, (section, exit_step) in enumerate(zip(sections, exits)):
                h_in = inputs[i]
                h_out = section(_clone(h_in))
                previous = logits[i - 1] if i > 0 else torch.zeros(0, device=device)
                ts, te = _trace(section, (_clone(h_in),)), _trace(exit_step, (_clone(h_out), previous))
                if not (_close(ts(_clone(h_in)), h_out) and _close(te(_clone(h_out), previous), logits[i])):
                    raise RuntimeError(f"tracing section/exit {i} changed its outputs; it cannot be exported "
                                       f"to TorchScript")
                traced_sections.append(ts)
                traced_exits.append(te)
            wrapper = ScriptedEarlyExit(traced_sections, traced_exits, policy, meta["exit_macs"], meta["input_shape"],
                                        meta["num_classes"], json.dumps(meta), _channels_last(net),
                                        meta["skipped_heads"]).to(device).eval()
            scripted: torch.jit.ScriptModule = torch.jit.script(wrapper)
            if freeze or optimize:
                # weights become constants (Conv+BN folded, ops fused) across the whole walk, loops unrolled
                scripted = torch.jit.freeze(scripted, preserved_attrs=PRESERVED)
            if optimize:
                scripted = _optimise(scripted, example)
    return scripted, meta


def _optimise(frozen: torch.jit.ScriptModule, example: Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.optimize_for_inference``, kept only if it runs and answers the example like the frozen module
    (batch and single sample)."""
    try:
        optimised = torch.jit.optimize_for_inference(frozen)
        for x in (example, example[:1]):
            want, got = frozen(x), optimised(x)
            if not (torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])):
                return frozen
    except Exception:  # noqa: BLE001 - an optional rewrite; the frozen module stays
        return frozen
    return optimised


def export_torchscript(net: Network, policy: ExitPolicy, costs: CostTable, path: str | Path,
                       freeze: bool = True, class_names: Sequence[str] | None = None) -> Path:
    """Write one TorchScript file that exits early; ``torch.jit.load(path)`` runs it without this package.

    ``model(x)`` -> ``(prediction, exit_index, macs, confidence)``. The policy, cost table, input shape
    (C, H, W) and class count ride along as attributes (``thresholds``, ``temperatures``, ``fallback``, ``rule``
    (the exit rule's name), ``exit_macs``, ``input_shape``, ``metadata``) and as the JSON entry ``scan_lightning.json`` of the file's
    ``_extra_files``. ``freeze``: ``torch.jit.freeze`` the whole walk (weights become constants, Conv+BN
    folded, the loop over sections unrolled). The module runs on the device ``net`` is on.
    """
    scripted, meta = build_torchscript(net, policy, costs, freeze=freeze, class_names=class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # torch 2.9+: "torch.jit.save is deprecated"
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    return path


def load_torchscript(path: str | Path, map_location: str | torch.device | None = None
                     ) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript file and its metadata (what ``torch.jit.load`` with ``_extra_files`` gives)."""
    extra = {TORCHSCRIPT_META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # torch 2.9+: "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    return module, json.loads(extra[TORCHSCRIPT_META])


# --- ONNX -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.WARNING):
    """The ONNX exporter's passes log every step at INFO (Hydra's root logger shows INFO): keep them quiet."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in saved:
            logger.setLevel(old)


def _onnx_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                 exporter: str, varargs: bool) -> None:
    if exporter == "dynamo":
        batch = torch.export.Dim("batch")
        shapes = [{0: batch} for _ in args]
        dynamic_shapes = (tuple(shapes),) if varargs else tuple(shapes)
        with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
            warnings.simplefilter("ignore")      # e.g. "the axis name batch will not be used" (one shared Dim)
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
        if program is None:   # dynamo=True always returns the program; the declared result also covers dynamo=False
            raise RuntimeError(f"torch.onnx.export returned no ONNX program for {path.name}")
        program.save(str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the TorchScript-based exporter is deprecated (still works)
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names,
                              dynamic_axes={name: {0: "batch"} for name in [*input_names, *output_names]})


def export_onnx(net: Network, policy: ExitPolicy, costs: CostTable, directory: str | Path,
                exporter: str = "dynamo", class_names: Sequence[str] | None = None) -> Path:
    """Write ``section{i}.onnx`` and ``exit{i}.onnx`` (batch axis dynamic) and ``manifest.json`` into ``directory``.

    Section 0 reads ``x``; section i > 0 reads ``in0..`` (what section i - 1 returned as ``out0..``, in
    order); every section returns ``out0..`` (one map, or one per scale). Exit i reads ``h`` (the last,
    coarsest map section i returned) and, with ISC after the first exit, ``previous`` (exit i - 1's logits for
    the same samples), and returns ``logits``. The manifest lists every file with its input and output names,
    the policy, cost table (and ``exit_macs``: MACs paid at exit 0..K-1 and at the fallback), input shape
    (C, H, W) and class count.
    ``exporter``: ``"dynamo"`` (torch.export-based, the default of ``torch.onnx.export``) or ``"legacy"``
    (TorchScript-based; deprecated in torch, but several times faster to export).
    """
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is not allowed; choose one of {ONNX_EXPORTERS}")
    meta = export_metadata(net, policy, costs, class_names)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with eval_mode(net):
        device = next(net.parameters()).device
        example = torch.randn(EXAMPLE_BATCH, *costs.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
        sections, exits, inputs, logits = _steps(net, example)
        section_entries, exit_entries = [], []
        with torch.no_grad():
            for i, (section, exit_step) in enumerate(zip(sections, exits)):
                h_in = inputs[i]
                h_out = section(_clone(h_in))
                names_in = ["x"] if i == 0 else [f"in{j}" for j in range(len(h_in))]
                names_out = [f"out{j}" for j in range(len(h_out))]
                file = f"section{i}.onnx"
                _onnx_export(_OnnxSection(section).eval(), tuple(_clone(h_in)), directory / file, names_in, names_out,
                             exporter, varargs=True)
                section_entries.append({"file": file, "inputs": names_in, "outputs": names_out})
                uses_previous = exit_step.uses_previous
                args = (h_out[-1], logits[i - 1]) if uses_previous else (h_out[-1],)
                exit_in = ["h", "previous"] if uses_previous else ["h"]
                file = f"exit{i}.onnx"
                _onnx_export(_OnnxExit(exit_step).eval(), args, directory / file, exit_in, ["logits"], exporter,
                             varargs=False)
                exit_entries.append({"file": file, "inputs": exit_in, "outputs": ["logits"],
                                     "uses_previous": uses_previous})
    manifest = {**meta, "format": "scan_lightning.onnx_early_exit", "exporter": exporter,
                "sections": section_entries, "exits": exit_entries}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return directory
