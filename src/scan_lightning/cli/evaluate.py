"""Evaluate a checkpoint: ``python -m scan_lightning.evaluate ckpt_path=... [policy.thresholds=[...]]`` (Hydra).

Per-exit table, anytime and budgeted curves, and dynamic inference at saved (``thresholds.json`` next to
the checkpoint), given, or freshly searched thresholds, with the measured wall clock of the real early-exit
predictor against the plain network, both in the deployment form (``timing.deploy``), at each
``timing.batch_sizes``. The same pipeline as the post-fit ``ThresholdSearch`` callback. With ``logger=wandb`` the
per-exit table, figures, budgeted curve and policy go to a W&B run as well (:mod:`scan_lightning.reporting.dashboard`).
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from scan_lightning.cli.task import cli as run_cli
from scan_lightning.cli.task import run_entry_point, task_wrapper
from scan_lightning.data.base import input_shape
from scan_lightning.evaluation.pipeline import run_post_fit
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.policy.exit_policy import check_policy_spec, model_identity, resolve_policy, spec_rule
from scan_lightning.policy.settings import SearchSettings
from scan_lightning.reporting.dashboard import log_exit_table, log_post_fit
from scan_lightning.reporting.plots import run_title
from scan_lightning.reporting.tables import exit_rows, render_dynamic_summary, render_exit_table
from scan_lightning.runtime.settings import TimingSettings
from scan_lightning.training.builders import build_group
from scan_lightning.training.checkpoints import resolve_baseline
from scan_lightning.training.module import load_module
from scan_lightning.utils.config import build, to_plain
from scan_lightning.utils.defaults import config_dir
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)


@task_wrapper
def evaluate(cfg: DictConfig) -> PostFitResult:
    """Load ``cfg.ckpt_path`` (weights_only), rebuild its data from the stored run config, report (to the console
    and to ``cfg.logger``'s loggers: ``logger=wandb``)."""
    search = resolve_baseline(SearchSettings.from_config(to_plain(cfg.search)))
    timing = TimingSettings.from_config(to_plain(cfg.timing))
    policy_cfg = to_plain(cfg.policy)
    check_policy_spec(policy_cfg, allow_search=True)
    loggers = build_group(cfg.get("logger"))
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
    module = load_module(ckpt)
    net = module.net.eval()
    run_cfg = OmegaConf.create(module.hparams.run_config)
    shape = input_shape(run_cfg.data)
    policy = None if policy_cfg.get("thresholds") == "search" else resolve_policy(
        net.num_exits, ckpt, policy_cfg, required=False, model=model_identity(net, shape))

    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    dm = build(cast(DictConfig, data_cfg))
    dm.prepare_data()
    dm.setup("test")
    result = run_post_fit(net, dm.eval_dataloader("val"), dm.eval_dataloader("test"), shape, search, timing, policy,
                          progress=True, rule=spec_rule(policy_cfg))
    rows = exit_rows(result.costs, {a.exit: a.accuracy for a in result.anytime})
    log.info(render_exit_table(rows, f"Per-exit test results ({ckpt.name})", result.costs.plain_macs))
    log.info(render_dynamic_summary(result))
    if cfg.get("output"):
        result.save(cfg.output)
    report(loggers, cfg, rows, result, run_title(module.hparams.get("run_config")))
    return result


def report(loggers: list[Logger], cfg: DictConfig, rows: list[dict], result: PostFitResult, title: str) -> None:
    """What ``evaluate`` found, to its loggers (``logger=wandb``): its config, the scalars, the per-exit table and
    the post-fit figures, budgeted curve and policy (:mod:`scan_lightning.reporting.dashboard`)."""
    for logger in loggers:
        logger.log_hyperparams(to_plain(cfg))
        logger.log_metrics(result.metrics(), step=0)
    log_exit_table(loggers, rows, step=0)
    log_post_fit(loggers, result, title, step=0)
    for logger in loggers:
        logger.save()
        logger.finalize("success")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """The Hydra main of ``evaluate``."""
    run_entry_point(evaluate, cfg, prefix="error")


def cli() -> None:
    """The console command (``scan-evaluate``, ``python -m scan_lightning.evaluate``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
