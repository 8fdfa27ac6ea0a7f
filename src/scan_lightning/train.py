"""Train a multi-exit network: ``python -m scan_lightning.train [overrides]`` (Hydra)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import LearningRateMonitor

from scan_lightning.callbacks import ThresholdSearch
from scan_lightning.config import ConfigError, build, config_dir, to_plain
from scan_lightning.finetune import check_new_tensors_train, load_matching, network_state, read_checkpoint
from scan_lightning.inference.cost import measure_costs
from scan_lightning.module import MultiExitModule
from scan_lightning.phases import SUMMARY, run_phases
from scan_lightning.report import exit_rows, print_exit_table


def _describe(err: BaseException) -> str:
    """The innermost cause's message, and the config key it came from."""
    keys = re.findall(r"full_key: (\S+)", str(err))
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    msg = str(root).split("\n")[0] if isinstance(root, OmegaConfBaseException) else str(root)
    return f"{msg} (config key: {keys[-1]})" if keys else msg


def _build_group(cfg: DictConfig | None) -> list:
    """Instantiate a named dict of callbacks or loggers (``None``/empty -> [])."""
    return [build(node) for node in (cfg or {}).values() if node is not None and "_target_" in node]


def build_module(cfg: DictConfig, teacher_model: dict | None = None) -> MultiExitModule:
    """The LightningModule from plain, resolved copies of the model, loss and optim configs.

    ``teacher`` and ``init_from`` checkpoints are read and loaded here; ``teacher_model`` instead builds
    the teacher's architecture without weights (to check a later phase's config before its teacher exists).
    """
    teacher_ckpt = read_checkpoint(cfg.teacher) if cfg.get("teacher") and teacher_model is None else None
    if teacher_ckpt is not None:
        teacher_model = teacher_ckpt["hyper_parameters"]["model"]
    trainable = cfg.get("trainable")
    trainable = [trainable] if isinstance(trainable, str) else trainable
    module = MultiExitModule(model=to_plain(cfg.model), loss=to_plain(cfg.loss), optim=to_plain(cfg.optim),
                             run_config=to_plain(cfg), trainable=list(trainable) if trainable else None,
                             teacher_model=teacher_model)
    if teacher_ckpt is not None:
        module.teacher.load_state_dict(network_state(teacher_ckpt))
    if cfg.get("init_from"):
        new = load_matching(module.net, network_state(read_checkpoint(cfg.init_from)))
        check_new_tensors_train(module.net, new)
        if new:
            print(f"init_from: {len(new)} tensors are not in {cfg.init_from} and start fresh: {', '.join(new[:6])}"
                  f"{' ...' if len(new) > 6 else ''}")
    return module


def prepare(cfg: DictConfig, teacher_model: dict | None = None, check_data: bool = True
            ) -> tuple[MultiExitModule, pl.LightningDataModule, pl.Trainer]:
    """Build everything that can reject the config, then (``check_data``) check the data is there - all before
    training starts."""
    try:
        module = build_module(cfg, teacher_model)
        datamodule = build(cfg.data)
        callbacks, loggers = _build_group(cfg.get("callbacks")), _build_group(cfg.get("logger"))
        if not loggers:  # Lightning refuses an LR monitor without a logger
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        if check_data:
            datamodule.prepare_data()  # missing data is reported here, before the run starts
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(_describe(err)) from err
    return module, datamodule, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the selected checkpoint, print the per-exit table. Returns the final metrics.

    With ``phases`` set, runs each phase in turn (see :mod:`scan_lightning.phases`).
    """
    if cfg.get("phases"):
        return run_phases(cfg, run=train, prepare=prepare)
    try:
        pl.seed_everything(cfg.seed, workers=True)
        module, datamodule, trainer = prepare(cfg)

        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        cb = trainer.checkpoint_callback
        best = cb.best_model_path if cb is not None else ""
        if cfg.get("test"):
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                report_exits(module, cfg, metrics, out_dir)
        search = next((c for c in trainer.callbacks if isinstance(c, ThresholdSearch)), None)
        if search is not None:
            metrics.update(search.metrics)
        checkpoint = best or final_checkpoint(trainer, out_dir)   # every rank: saving is collective under DDP
        if trainer.is_global_zero:
            write_summary(out_dir, metrics, checkpoint)
        return metrics
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()


def final_checkpoint(trainer: pl.Trainer, out_dir: Path) -> str:
    """``last.ckpt`` when checkpointing ran; else (fast_dev_run, no checkpoint callback) the final weights, saved
    now so a later phase can start from them."""
    cb = trainer.checkpoint_callback
    last = Path(cb.dirpath) / "last.ckpt" if cb is not None and cb.dirpath else None
    if last is not None and last.is_file():
        return str(last)
    path = out_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return str(path)


def write_summary(out_dir: Path, metrics: dict[str, float], checkpoint: str | None) -> None:
    """``summary.json``: the final metrics and the selected checkpoint; written last, so it marks a finished run."""
    summary = {"checkpoint": checkpoint, "metrics": metrics}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))


def report_exits(module: MultiExitModule, cfg: DictConfig, metrics: dict[str, float], out_dir: Path) -> None:
    """Print and save the per-exit test table (cumulative MACs, params, top-1)."""
    shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    costs = measure_costs(module.net, shape)
    acc = {name: metrics.get(f"test/acc/{name}") for name in module.metric_names}
    rows = exit_rows(costs, acc)
    print_exit_table(rows, f"Per-exit test results ({cfg.task_name})", costs.plain_macs)
    (out_dir / "exit_table.json").write_text(json.dumps({"rows": rows, "costs": costs.to_dict()}, indent=2))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except ConfigError as err:
        print(f"Invalid configuration: {err}", file=sys.stderr)
        sys.exit(2)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
