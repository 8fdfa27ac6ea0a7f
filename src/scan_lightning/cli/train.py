"""Train a multi-exit network: ``python -m scan_lightning.train [overrides]`` (Hydra).

A thin entry point over :func:`train`; everything a run is built from lives in :mod:`scan_lightning.training.builders`.
"""
from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_only

from scan_lightning.cli.task import cli as run_cli
from scan_lightning.cli.task import run_entry_point, task_wrapper
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.reporting.config_tree import print_config_tree
from scan_lightning.reporting.dashboard import log_checkpoint, log_exit_table
from scan_lightning.reporting.tables import render_dynamic_summary
from scan_lightning.training.builders import (
    SUMMARY,
    check_same_run,
    final_checkpoint,
    finished,
    prepare,
    report_exits,
    resume_checkpoint,
    save_resolved_config,
    write_summary,
)
from scan_lightning.training.callbacks import InterruptCheckpoint, WandbDashboard
from scan_lightning.training.callbacks.threshold_search import result_path, spawned_post_fit
from scan_lightning.training.checkpoints import selected_checkpoint
from scan_lightning.training.phases import run_phases
from scan_lightning.utils.config import ConfigError, RunStopped, to_plain
from scan_lightning.utils.defaults import config_dir
from scan_lightning.utils.logs import get_logger

__all__ = ["ConfigError", "main", "swept_metric", "train", "train_for_sweep"]
log = get_logger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the selected checkpoint, report the per-exit table. Returns the final metrics.

    With ``phases`` set, runs each phase in turn (see :mod:`scan_lightning.training.phases`). Under DDP every process
    runs this; files are written and tables logged by rank 0 only.
    """
    if cfg.get("phases"):
        return run_phases(cfg, run=train)
    out_dir = Path(cfg.paths.output_dir)
    if not cfg.get("ckpt_path") and (finished(out_dir) or resume_checkpoint(out_dir)):
        check_same_run(out_dir, cfg)
    if finished(out_dir):   # a rerun of a finished job (e.g. a multirun started again in its sweep dir)
        log.info(f"{out_dir} holds a finished run ({SUMMARY}): skipped")
        return json.loads((out_dir / SUMMARY).read_text())["metrics"]
    resume = None if cfg.get("ckpt_path") else resume_checkpoint(out_dir)
    if resume:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.ckpt_path = resume
        log.info(f"{out_dir} holds an unfinished run: resuming from {resume}")
    pl.seed_everything(cfg.seed, workers=True)
    module, datamodule, trainer = prepare(cfg)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # Lightning sets the rank on the decorator
        save_resolved_config(cfg, out_dir)
        if (cfg.get("extras") or {}).get("print_config"):
            print_config_tree(cfg, out_dir)
        for logger in trainer.loggers:   # the resolved run config is the run's hyperparameters (W&B: its config)
            logger.log_hyperparams(to_plain(cfg))

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except (SystemExit, KeyboardInterrupt) as err:   # Lightning's ends of a run stopped by SIGTERM / SIGINT
        if not trainer.interrupted:
            raise
        raise interrupted(trainer, out_dir) from err
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}   # the post-fit search's included
    best = selected_checkpoint(trainer)
    if trainer.is_global_zero and "test/dynamic/accuracy" in metrics and spawned_post_fit(trainer):
        # ddp_spawn: the search ran (and logged) in a child process; this process's log gets its summary too
        log.info(render_dynamic_summary(PostFitResult.load(result_path(trainer))))
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            rows = report_exits(module, cfg, metrics, out_dir)
            log_exit_table(trainer.loggers, rows, step=trainer.global_step)
    checkpoint = best or final_checkpoint(trainer, out_dir)   # every rank: saving is collective under DDP
    if trainer.is_global_zero:
        dashboard = next((c for c in trainer.callbacks if isinstance(c, WandbDashboard)), None)  # type: ignore[attr-defined]  # Lightning sets it
        if dashboard is not None and dashboard.log_checkpoint:
            log_checkpoint(trainer.loggers, checkpoint, result_path(trainer))
        write_summary(out_dir, metrics, checkpoint)
    return metrics


class RunInterrupted(RunStopped):
    """SIGTERM or SIGINT stopped training; a checkpoint and a partial summary were written."""


def interrupted(trainer: pl.Trainer, out_dir: Path) -> RunInterrupted:
    """After Lightning stopped a run for a signal (its loggers finalised, ``InterruptCheckpoint`` saved): the
    partial ``summary.json`` (status, step, metrics so far, checkpoint to resume from) and the error to exit with."""
    sigterm = bool(getattr(trainer, "received_sigterm", False))
    name, number = ("SIGTERM", signal.SIGTERM) if sigterm else ("SIGINT", signal.SIGINT)
    saved = [c.ckpt_path for c in trainer.callbacks if isinstance(c, InterruptCheckpoint)]  # type: ignore[attr-defined]  # Lightning sets it
    checkpoint = next((p for p in saved if Path(p).is_file()), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        write_summary(out_dir, metrics, checkpoint, status="interrupted",
                      extra={"signal": name, "global_step": trainer.global_step, "epoch": trainer.current_epoch})
    resume = f"; resume with ckpt_path={checkpoint}" if checkpoint else ""
    err = RunInterrupted(f"{name} at step {trainer.global_step} (epoch {trainer.current_epoch}){resume}")
    err.exit_code = 128 + int(number)
    return err


def check_optimized_metric(name: object) -> None:
    """Before training: ``optimized_metric`` is ``None`` or a metric name that does not select on the test set."""
    if name is None:
        return
    if not isinstance(name, str) or not name:
        raise ConfigError(f"optimized_metric={name!r} must be a metric name such as 'val/acc/ensemble'")
    if name.startswith("test/"):
        raise ConfigError(f"optimized_metric={name!r} would choose hyperparameters on the test set; optimise a "
                          f"validation metric such as 'val/acc/ensemble' or 'val/dynamic/accuracy'")


def swept_metric(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value of ``optimized_metric`` among a run's final metrics, as a float (what a sweeper such as Optuna
    optimises); ``None`` when no metric is named. A name the run did not produce is one clear error listing
    the names it did."""
    check_optimized_metric(name)
    if name is None:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} is not among this run's metrics; choose one of "
                          f"{sorted(metrics)}")
    return float(metrics[name])


def train_for_sweep(cfg: DictConfig) -> float | None:
    """:func:`train`, then the value of ``cfg.optimized_metric`` (the Hydra main's return value)."""
    check_optimized_metric(cfg.get("optimized_metric"))
    return swept_metric(train(cfg), cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric``'s value for sweepers (``hparams_search=...``)."""
    return run_entry_point(train_for_sweep, cfg)


def cli() -> None:
    """The console command (``scan-train``, ``python -m scan_lightning.train``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
