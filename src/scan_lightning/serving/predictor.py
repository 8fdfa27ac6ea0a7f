"""``scan_lightning.Predictor``: a trained (or exported) multi-exit network that really exits early.

    from scan_lightning import Predictor
    predictor = Predictor.from_checkpoint("logs/train/runs/<time>/checkpoints/last.ckpt")    # thresholds.json beside it
    out = predictor.predict(test_loader)              # or a (N, C, H, W) tensor
    out.labels, out.confidence, out.exit_index, out.macs, out.batch_ms
    cheap = Predictor.from_checkpoint(path, budget_macs=3e6)   # thresholds from the saved budgeted curve
    Predictor.from_export("model.ts")                 # TorchScript file or ONNX folder from `scan_lightning.cli.export`
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from scan_lightning.cost.macs import measure_costs
from scan_lightning.evaluation.analysis import pick_budget
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.export import deploy
from scan_lightning.policy.exit_policy import ExitPolicy, model_identity, resolve_policy
from scan_lightning.runtime.early_exit import EarlyExitResult, EarlyExitRunner
from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.runtime.timing import Stopwatch


@dataclass
class Predictions:
    """Per image: label, confidence, exit index (0-based; ``num_exits`` = nobody claimed it, the fallback
    answered) and MACs paid; per batch: milliseconds."""

    labels: torch.Tensor
    confidence: torch.Tensor
    exit_index: torch.Tensor
    macs: torch.Tensor
    batch_ms: list[float] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        """The labels as class names (as numbers when the checkpoint has none)."""
        return [self.class_names[i] if self.class_names else str(i) for i in self.labels.tolist()]

    @property
    def ms_per_image(self) -> float:
        """Wall-clock milliseconds per image over all batches."""
        return sum(self.batch_ms) / max(1, self.labels.numel())

    @property
    def mean_macs(self) -> float:
        """Mean MACs paid per image."""
        return self.macs.double().mean().item()


Runner = Callable[[torch.Tensor], EarlyExitResult]


class Predictor:
    """Runs images through an early-exit runner and gathers :class:`Predictions`.

    Build it with :meth:`from_checkpoint` or :meth:`from_export`; ``policy`` and ``budgeted`` (the saved
    budgeted curve, to pick thresholds for a budget) are what the runner was made with.
    """

    def __init__(self, runner: Runner, policy: ExitPolicy, input_shape: Sequence[int], device: torch.device | str = "cpu",
                 class_names: list[str] | None = None, budgeted: PostFitResult | None = None,
                 rebuild: Callable[[ExitPolicy], Runner] | None = None) -> None:
        self.runner, self.policy, self.input_shape = runner, policy, tuple(input_shape)
        self.device = torch.device(device)
        self.class_names, self.budgeted, self._rebuild = class_names, budgeted, rebuild

    @property
    def rule(self) -> str:
        """The exit rule the runner decides with (``max_softmax``, ``entropy``, ... :mod:`scan_lightning.policy.rules`)."""
        return self.policy.rule.name

    def describe(self) -> dict[str, Any]:
        """What this predictor runs: the rule and its parameters, thresholds, temperatures, fallback (plain data)."""
        return self.policy.to_dict()

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, thresholds: str | Path | Sequence[float] | None = None,
                        budget_macs: float | None = None, budget_ms: float | None = None,
                        deploy_options: DeployOptions | None = None, device: str | torch.device = "cpu",
                        policy: ExitPolicy | None = None) -> Predictor:
        """A checkpoint written by ``scan_lightning.cli.train`` (loaded with ``weights_only=True``).

        ``thresholds``: a ``thresholds.json`` path (its policy: any rule), a list (one per exit; max softmax), or
        ``None`` = the ``thresholds.json`` beside the checkpoint; ``policy``: an :class:`ExitPolicy` of any rule
        instead. ``budget_macs`` / ``budget_ms``: instead, the saved budgeted-curve point with the
        most compute whose validation mean cost per image fits. ``deploy_options``: the deployment form
        (default: the one saved with the thresholds, else BN folded + patch GEMMs + channels-last).
        """
        from scan_lightning.training.module import load_module

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        module = load_module(path, map_location=device)
        net = module.net.eval()
        data = module.hparams.run_config.get("data", {}) if module.hparams.run_config else {}
        shape = (data["in_channels"], data["image_size"], data["image_size"])
        saved_path = Path(thresholds) if isinstance(thresholds, (str, Path)) else path.parent / "thresholds.json"
        if budget_macs is not None or budget_ms is not None:
            if not saved_path.is_file():
                raise FileNotFoundError(f"a budget needs the saved budgeted curve in {saved_path}")
            result = PostFitResult.load(saved_path)    # one clear error when it holds no budgeted curve
            policy = pick_budget(result, budget_macs, budget_ms).for_exits(net.num_exits)
            saved: PostFitResult | None = result
        elif policy is not None:
            policy = policy.for_exits(net.num_exits, "the policy given")
            saved = saved_result(saved_path)
        else:
            spec = {"thresholds_path": str(thresholds)} if isinstance(thresholds, (str, Path)) else \
                {"thresholds": thresholds}
            policy = resolve_policy(net.num_exits, path, spec, model=model_identity(net, shape))
            saved = saved_result(saved_path)
        if deploy_options is None:
            deploy_options = saved.deploy if saved is not None and saved.deploy else DeployOptions()
        costs = measure_costs(net, shape)
        deployed = deploy(net, deploy_options, costs)

        def rebuild(p: ExitPolicy) -> Runner:
            return EarlyExitRunner(deployed, p, costs)

        return cls(rebuild(policy), policy, shape, device, data.get("class_names"), saved, rebuild)

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """A TorchScript file or an ONNX folder written by ``python -m scan_lightning.export``."""
        runner, meta = load_export(path, device)
        policy = ExitPolicy.from_dict(meta["policy"])
        return cls(runner, policy, meta["input_shape"], device, meta.get("class_names"))

    def with_budget(self, macs: float | None = None, ms: float | None = None) -> Predictor:
        """The same network at the saved budgeted-curve point that fits a mean cost per image."""
        if self.budgeted is None or self._rebuild is None:
            raise ValueError("this predictor has no saved budgeted curve (build it with from_checkpoint)")
        policy = pick_budget(self.budgeted, macs, ms)
        return Predictor(self._rebuild(policy), policy, self.input_shape, self.device, self.class_names,
                         self.budgeted, self._rebuild)

    # --- prediction ---------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"images of shape {tuple(x.shape[1:])} given; this network takes {self.input_shape} "
                             f"(C, H, W), as batches (N, C, H, W)")
        return x.to(self.device)

    def predict(self, data: torch.Tensor | Iterable, batch_size: int = 256, progress: bool | None = None) -> Predictions:
        """Predict a tensor of images (split into ``batch_size`` batches) or every batch of a DataLoader
        (``(x, y)`` pairs or bare ``x``). ``progress``: a progress bar (default: on for loaders)."""
        if isinstance(data, torch.Tensor):
            batches: Iterable = data.split(batch_size) if data.dim() == len(self.input_shape) + 1 else [data]
            progress = bool(progress)
        else:
            batches = (b[0] if isinstance(b, (list, tuple)) else b for b in data)
            progress = True if progress is None else progress
        if progress:
            batches = track(batches, description="predicting", total=_length(data, batch_size), transient=True)
        watch = Stopwatch(self.device)
        results: list[EarlyExitResult] = []
        batch_ms: list[float] = []
        for x in batches:
            x = self._check(x)
            batch_ms.append(watch.ms(functools.partial(lambda x: results.append(self.runner(x)), x)))
        cat = lambda name: torch.cat([getattr(r, name).reshape(-1).cpu() for r in results])  # noqa: E731
        return Predictions(cat("prediction"), cat("confidence"), cat("exit_index"), cat("macs"), batch_ms,
                           self.class_names)


def saved_result(path: Path) -> PostFitResult | None:
    """The post-fit result saved at ``path`` (``thresholds.json``), for its deployment form and budgeted curve;
    ``None`` when there is none, or the file holds a policy alone or no readable result (the policy was given or
    read, with its own checks, before)."""
    try:
        return PostFitResult.load(path) if path.is_file() else None
    except ValueError:
        return None


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[Runner, dict]:
    """A runner over an exported artefact (TorchScript file, or ONNX folder with ``manifest.json``) and its
    metadata (policy, cost table, input shape)."""
    path = Path(path)
    if path.is_dir():
        from scan_lightning.export.onnx_runner import MANIFEST, OnnxEarlyExit

        onnx = OnnxEarlyExit(path)
        meta = json.loads((path / MANIFEST).read_text())

        def run_onnx(x: torch.Tensor) -> EarlyExitResult:
            r = onnx(x.detach().cpu().numpy())
            return EarlyExitResult(*(torch.from_numpy(v) for v in (r.prediction, r.exit_index, r.macs, r.confidence)))

        return run_onnx, meta
    if path.is_file():
        from scan_lightning.export.formats import load_torchscript

        module, meta = load_torchscript(path, map_location=device)
        return (lambda x: EarlyExitResult(*module(x))), meta
    raise FileNotFoundError(f"export {path} does not exist (a TorchScript file or an ONNX folder from "
                            f"`python -m scan_lightning.export`)")


def _length(data, batch_size: int) -> int | None:
    if isinstance(data, torch.Tensor):
        return (data.shape[0] + batch_size - 1) // batch_size
    try:
        return len(data)
    except TypeError:
        return None
