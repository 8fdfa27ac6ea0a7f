"""What a run shows on W&B beyond Lightning's scalars.

Per-exit curves on the epoch axis, the per-exit table, the post-fit figures and budgeted curve, thresholds and
temperatures in the run summary, the selected checkpoint (with its ``thresholds.json``) as an artifact. Plain
functions over a trainer's (or ``evaluate``'s) loggers: each picks out the :class:`WandbLogger` s and does
nothing without one. Callers run them on rank 0 (Lightning's W&B logger is a no-op elsewhere as well).
README "W&B dashboards" lists the keys and a panel layout over them.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from pytorch_lightning.loggers import Logger, WandbLogger

from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.models.outputs import exit_name
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.reporting.plots import figure_accuracy_vs_macs, figure_exit_histogram

EXIT_TABLE = "test/exit_table"
BUDGETED = "dynamic/budgeted"
FIGURES = {"dynamic/accuracy_vs_macs": figure_accuracy_vs_macs, "dynamic/exit_histogram": figure_exit_histogram}


def wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    """The W&B loggers among ``loggers``."""
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def define_exit_metrics(loggers: Iterable[Logger], metric_names: Sequence[str], loss_names: Sequence[str]) -> None:
    """Per-exit accuracies and losses of validation and test against ``epoch`` (Lightning logs it with them),
    the best validation accuracy per exit and the lowest validation loss in the summary; training curves stay on
    Lightning's ``trainer/global_step`` axis. Names are explicit, not globs: they win over Lightning's ``*``."""
    for run in (lg.experiment for lg in wandb_loggers(loggers)):
        run.define_metric("epoch")
        for stage in ("val", "test"):
            for name in metric_names:
                run.define_metric(f"{stage}/acc/{name}", step_metric="epoch", summary="max" if stage == "val" else "last")
            for name in ("total", *loss_names):
                run.define_metric(f"{stage}/loss/{name}", step_metric="epoch", summary="min" if stage == "val" else "last")


def log_exit_table(loggers: Iterable[Logger], rows: Sequence[Mapping[str, Any]], step: int | None = None) -> None:
    """The per-exit table (:func:`scan_lightning.reporting.tables.exit_rows`): exit, cumulative MACs, params, test top-1."""
    data = [[r["exit"], int(r["macs"]), int(r["params"]), r["top1"]] for r in rows]
    for lg in wandb_loggers(loggers):
        lg.log_table(EXIT_TABLE, columns=["exit", "cumulative_macs", "params", "accuracy"], data=data, step=step)


def log_post_fit(loggers: Iterable[Logger], result: PostFitResult, title: str = "", step: int | None = None) -> None:
    """A post-fit result: the two figures as images, the budgeted curve (test top-1 against mean MACs) as a line plot,
    the exit policy in the run summary."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    figures = {key: make(result, title) for key, make in FIGURES.items()}
    columns: list[str | int] = ["budget_p", "mean_macs_M", "test_accuracy", "val_accuracy", "speedup_plain"]
    rows = [[r.p, r.test.mean_macs / 1e6, r.test.accuracy, r.val_accuracy, r.test.speedup_plain]
            for r in result.budgeted]
    for lg in runs:
        for key, fig in figures.items():
            lg.log_image(key, [fig], step=step)
        curve = wandb.plot.line(wandb.Table(columns=columns, data=rows), "mean_macs_M", "test_accuracy",
                                title=f"Budgeted batch classification: test top-1 vs mean MACs (M) {title}".strip())
        lg.log_metrics({BUDGETED: curve}, step=step)  # type: ignore[dict-item]  # W&B logs charts as metrics
        lg.experiment.summary.update(policy_summary(result.policy))
    for fig in figures.values():
        plt.close(fig)


def policy_summary(policy: ExitPolicy) -> dict[str, Any]:
    """The exit policy as summary values: the rule (``dynamic/rule``) and its fitted parameters
    (``dynamic/rule_params/<name>``, as JSON), ``dynamic/threshold/exitK``, ``dynamic/temperature/exitK``, fallback."""
    out: dict[str, Any] = {"dynamic/fallback": policy.fallback, "dynamic/rule": policy.rule.name}
    for key, value in policy.rule.params.items():
        out[f"dynamic/rule_params/{key}"] = json.dumps(value)
    for i, (t, temp) in enumerate(zip(policy.thresholds, policy.temperatures)):
        out[f"dynamic/threshold/{exit_name(i)}"] = t
        out[f"dynamic/temperature/{exit_name(i)}"] = temp
    return out


def log_checkpoint(loggers: Iterable[Logger], checkpoint: str | Path, thresholds: str | Path | None) -> None:
    """The selected checkpoint and its ``thresholds.json`` as one ``model`` artifact (``model.ckpt``,
    ``thresholds.json``), alias ``selected``; offline it is stored with the run and uploaded by ``wandb sync``."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    for lg in runs:
        run = lg.experiment
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"checkpoint": str(checkpoint)})
        artifact.add_file(str(checkpoint), name="model.ckpt")
        if thresholds is not None and Path(thresholds).is_file():
            artifact.add_file(str(thresholds), name="thresholds.json")
        run.log_artifact(artifact, aliases=["selected", "latest"])
