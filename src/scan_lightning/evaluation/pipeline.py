"""The one post-fit inference pipeline, shared by the ``ThresholdSearch`` callback and ``evaluate``.

outputs (validation, test) -> costs (MACs; latency table of the deployment form) -> calibration + threshold
search on validation (or a given policy) -> scoring on test -> wall clock of the deployment form. It returns a
:class:`~scan_lightning.evaluation.result.PostFitResult`; it writes no files and loads no checkpoints (its callers
do both).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from scan_lightning.cost.macs import measure_costs
from scan_lightning.evaluation.analysis import score_policy, search_and_score
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.export.backends import deploy
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.policy.cache import collect_outputs
from scan_lightning.policy.exit_policy import ExitPolicy, model_identity
from scan_lightning.policy.rules import ExitRule
from scan_lightning.policy.settings import SearchSettings
from scan_lightning.runtime.memory import retained_memory
from scan_lightning.runtime.settings import TimingSettings
from scan_lightning.runtime.timing import first_images, measure_latency, measure_wall_clock
from scan_lightning.utils.modes import eval_mode


def run_post_fit(net: MultiExitNetwork, val_batches: Iterable, test_batches: Iterable,
                 input_shape: tuple[int, int, int],
                 search: SearchSettings, timing: TimingSettings, policy: ExitPolicy | None = None,
                 device: torch.device | str = "cpu", progress: bool = False, rule: ExitRule | None = None
                 ) -> PostFitResult:
    """Everything after training, for one network.

    ``policy``: score these thresholds; ``None``: calibrate, fit ``rule`` (max softmax by default) and search its
    thresholds on the validation outputs (a GA
    baseline naming a run directory must be resolved first: :func:`~scan_lightning.training.checkpoints.resolve_baseline`).
    ``timing.enabled``: measure the latency table and the wall clock of the deployment form (``timing.deploy``)
    on the first ``timing.images`` test images; ``search.cost=latency`` needs the latency table.
    """
    if policy is None and search.ga.baseline_run is not None:
        raise ValueError(f"search.ga.baseline={search.ga.baseline}: a baseline run must be read before the search "
                         f"(scan_lightning.training.checkpoints.resolve_baseline)")
    # timing.deploy.retain_memory tunes malloc process-wide: undone when the post-fit work ends (a training run's
    # process goes on, e.g. to the next job of a multirun)
    with eval_mode(net), retained_memory():
        val = collect_outputs(net, val_batches, device, "validation outputs" if progress else None)
        test = collect_outputs(net, test_batches, device, "test outputs" if progress else None)
        costs = measure_costs(net, input_shape)
        latency, deployed, images = None, None, None
        if timing.enabled or search.cost == "latency":
            deployed = deploy(net, timing.deploy, costs)
            images = first_images(test_batches, timing.images).to(device)
            latency = measure_latency(deployed, images, timing.latency_batch_size)
        if policy is None:
            result = search_and_score(val, test, costs, search, latency, rule)
        else:
            result = score_policy(val, test, costs, policy.for_exits(net.num_exits), budget_steps=search.budget_steps,
                                  latency=latency)
        result = dataclasses.replace(result, model=model_identity(net, input_shape),
                                     deploy=timing.deploy if deployed is not None else None)
        if timing.enabled:
            assert deployed is not None and images is not None
            wall = measure_wall_clock(deployed, costs, result.policy, images, timing.batch_sizes, timing.repeats)
            result = dataclasses.replace(result, wall_clock=wall)
    return result
