"""The one post-fit inference pipeline, shared by the ``ThresholdSearch`` callback and ``evaluate``.

outputs (validation, test) -> costs (MACs; latency table of the deployment form) -> calibration + threshold
search on validation (or a given policy) -> scoring on test -> wall clock of the deployment form.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from scan_lightning.cost.macs import measure_costs
from scan_lightning.evaluation.analysis import save_thresholds, score_policy, search_and_score
from scan_lightning.export import deploy
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.policy.cache import collect_outputs
from scan_lightning.policy.exit_policy import ExitPolicy, model_identity
from scan_lightning.reporting.plots import plot_accuracy_vs_macs, plot_exit_histogram
from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.runtime.memory import retained_memory
from scan_lightning.runtime.timing import first_images, measure_latency, measure_wall_clock


def deploy_options(timing: Mapping[str, Any]) -> DeployOptions:
    """The deployment form named by the ``timing.deploy`` config (unknown keys are one clear error)."""
    cfg = dict(timing.get("deploy") or {})
    unknown = sorted(set(cfg) - set(DeployOptions.__dataclass_fields__))
    if unknown:
        raise ValueError(f"timing.deploy has unknown keys {unknown}; allowed: {sorted(DeployOptions.__dataclass_fields__)}")
    not_bool = {k: v for k, v in cfg.items() if not isinstance(v, bool)}
    if not_bool:
        raise ValueError(f"timing.deploy settings must be true or false; got {not_bool}")
    return DeployOptions(**cfg)


def check_timing(timing: Mapping[str, Any]) -> None:
    """Reject bad timing settings before any work starts."""
    deploy_options(timing)
    sizes = list(timing.get("batch_sizes", [1, 256]))
    if not sizes or any(int(b) < 1 for b in sizes):
        raise ValueError(f"timing.batch_sizes={sizes} must be a non-empty list of sizes >= 1")
    for key in ("images", "repeats", "latency_batch_size"):
        if key in timing and int(timing[key]) < 1:
            raise ValueError(f"timing.{key}={timing[key]} must be >= 1")


def run_post_fit(net: MultiExitNetwork, val_batches: Iterable, test_batches: Iterable, input_shape: tuple[int, ...],
                 search: Mapping[str, Any], timing: Mapping[str, Any], policy: ExitPolicy | None = None,
                 out_dir: Path | None = None, device: torch.device | str = "cpu",
                 progress: bool = False, title: str = "") -> dict[str, Any]:
    """Everything after training, for one network; returns the ``thresholds.json`` layout.

    ``policy``: score these thresholds; ``None``: calibrate and search them on the validation outputs.
    ``timing.enabled``: measure the latency table and the wall clock of the deployment form (``timing.deploy``)
    on the first ``timing.images`` test images; ``search.cost=latency`` needs it. ``out_dir``: write
    ``thresholds.json`` and the two plots (titled ``title``) there.
    """
    check_timing(timing)
    was_training = net.training
    net.eval()
    # timing.deploy.retain_memory tunes malloc process-wide: undone when the post-fit work ends (a training run's
    # process goes on, e.g. to the next job of a multirun)
    try:
        with retained_memory():
            result = _post_fit(net, val_batches, test_batches, input_shape, search, timing, policy, device, progress)
    finally:
        net.train(was_training)
    if out_dir is not None:
        save_thresholds(result, Path(out_dir) / "thresholds.json")
        plot_accuracy_vs_macs(result, Path(out_dir) / "accuracy_vs_macs.png", title)
        plot_exit_histogram(result, Path(out_dir) / "exit_histogram.png", title)
    return result


def _post_fit(net: MultiExitNetwork, val_batches: Iterable, test_batches: Iterable, input_shape: tuple[int, ...],
              search: Mapping[str, Any], timing: Mapping[str, Any], policy: ExitPolicy | None,
              device: torch.device | str, progress: bool) -> dict[str, Any]:
    """The searches and timings of :func:`run_post_fit` (the network in eval mode)."""
    val = collect_outputs(net, val_batches, device, "validation outputs" if progress else None)
    test = collect_outputs(net, test_batches, device, "test outputs" if progress else None)
    costs = measure_costs(net, input_shape)
    latency, deployed, images = None, None, None
    if timing.get("enabled", True) or search.get("cost", "macs") == "latency":
        options = deploy_options(timing)
        deployed = deploy(net, options, costs)
        images = first_images(test_batches, int(timing.get("images", 512))).to(device)
        latency = measure_latency(deployed, images, int(timing.get("latency_batch_size", 64)))
    if policy is None:
        result = search_and_score(val, test, costs, search, latency)
    else:
        result = score_policy(val, test, costs, policy.for_exits(net.num_exits), latency,
                              int(search.get("budget_steps", 40)))
    result["model"] = model_identity(net, input_shape)
    if deployed is not None:
        result["deploy"] = options.to_dict()
    if timing.get("enabled", True):
        timings = measure_wall_clock(deployed, costs, ExitPolicy.from_dict(result), images,
                                     timing.get("batch_sizes", (1, 256)), int(timing.get("repeats", 5)))
        result["wall_clock"] = [t.to_dict() for t in timings]
    return result
