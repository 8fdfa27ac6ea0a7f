"""Post-fit threshold search on the held-out validation split; thresholds applied to the test set."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch

from scan_lightning.evaluation.pipeline import run_post_fit
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.policy.exit_policy import check_policy_spec, spec_rule
from scan_lightning.policy.rules import ExitRule
from scan_lightning.policy.settings import SearchSettings
from scan_lightning.reporting.dashboard import log_post_fit
from scan_lightning.reporting.plots import run_title, save_post_fit_figures
from scan_lightning.reporting.tables import render_dynamic_summary
from scan_lightning.runtime.settings import TimingSettings
from scan_lightning.training.checkpoints import network_state, resolve_baseline, selected_checkpoint
from scan_lightning.training.module import MultiExitModule
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)
RESULT = "thresholds.json"


def best_network(trainer: pl.Trainer, pl_module: MultiExitModule) -> MultiExitNetwork:
    """The network with the selected (best) checkpoint's weights; the current ones under fast_dev_run."""
    best = selected_checkpoint(trainer)
    if not best:
        return pl_module.net
    net = copy.deepcopy(pl_module.net)
    net.load_state_dict(network_state(torch.load(best, map_location=pl_module.device, weights_only=True)))
    return net


def result_path(trainer: pl.Trainer) -> Path:
    """Where the post-fit result (``thresholds.json``) of this trainer's run is written: beside the selected
    checkpoint, or in the run's output dir when there is none (fast_dev_run)."""
    best = selected_checkpoint(trainer)
    return (Path(best).parent if best else Path(trainer.default_root_dir)) / RESULT


def train_rule(policy: Mapping[str, Any]) -> ExitRule:
    """The exit rule a training run's post-fit search searches (``policy.rule``); one clear error for a policy that
    gives what only ``evaluate`` / ``export`` take (thresholds, temperatures, a thresholds file, a patience)."""
    check_policy_spec(policy)
    given = [k for k in ("thresholds", "temperatures", "thresholds_path") if policy.get(k) is not None]
    given += ["params.patience"] if (policy.get("params") or {}).get("patience") is not None else []
    if given:
        raise ValueError(f"policy.{given[0]} is for evaluate / export: a training run searches its thresholds "
                         f"(give policy.rule=<name> only)")
    return spec_rule(policy)


class ThresholdSearch(pl.Callback):
    """After fit, on rank 0: the post-fit pipeline (:func:`run_post_fit`) on the selected network.

    Settings are checked (and a GA baseline run read) when the callback is made, before training. After fit it
    writes ``thresholds.json`` (:func:`result_path`) plus two PNG plots, logs the summary, and logs ``test/dynamic/*``
    (and ``test/wall/*`` with ``timing.enabled``) through ``trainer.loggers`` and into ``trainer.callback_metrics``
    (so ``train`` returns them, under ``ddp_spawn`` too); W&B loggers also get the figures, the budgeted curve and
    the policy (:func:`~scan_lightning.reporting.dashboard.log_post_fit`). Under DDP it reads the whole validation
    and test sets on rank 0 alone, so every number counts every sample once.
    """

    def __init__(self, search: Mapping[str, Any] | SearchSettings, input_shape: list[int],
                 timing: Mapping[str, Any] | TimingSettings | None = None,
                 policy: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.rule = train_rule(policy or {})
        self.search = resolve_baseline(SearchSettings.from_config(search))
        self.timing = TimingSettings.from_config(timing if timing is not None else {"enabled": False})
        channels, height, width = (int(d) for d in input_shape)
        self.input_shape = (channels, height, width)
        self.result: PostFitResult | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Search, score, time; write the result and its figures; log it."""
        dm = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, not declared
        if not trainer.is_global_zero or trainer.sanity_checking or dm is None:
            return
        dm.setup("test")
        path = result_path(trainer)
        val, test = ((dm.eval_dataloader("val"), dm.eval_dataloader("test")) if hasattr(dm, "eval_dataloader")
                     else (dm.val_dataloader(), dm.test_dataloader()))
        title = run_title(pl_module.hparams.get("run_config"))
        net = best_network(trainer, cast(MultiExitModule, pl_module))
        self.result = run_post_fit(net, val, test, self.input_shape, self.search, self.timing, device=pl_module.device,
                                   rule=self.rule)
        self.result.save(path)
        save_post_fit_figures(self.result, path.parent, title)
        log.info(render_dynamic_summary(self.result))
        metrics = self.result.metrics()
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        log_post_fit(trainer.loggers, self.result, title, step=trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()


def spawned_post_fit(trainer: pl.Trainer) -> bool:
    """Did this trainer's post-fit search run in another process (``ddp_spawn``), so this one holds no result?"""
    searches = [c for c in trainer.callbacks if isinstance(c, ThresholdSearch)]  # type: ignore[attr-defined]
    return bool(searches) and all(c.result is None for c in searches)
