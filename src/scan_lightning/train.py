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
from scan_lightning.config import build, config_dir, to_plain
from scan_lightning.inference.analysis import save_thresholds
from scan_lightning.inference.cost import measure_costs
from scan_lightning.inference.timing import first_images, measure_wall_clock
from scan_lightning.module import MultiExitModule
from scan_lightning.report import exit_rows, print_dynamic_summary, print_exit_table


class ConfigError(ValueError):
    """The run's configuration was rejected before any work started."""


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


def build_module(cfg: DictConfig) -> MultiExitModule:
    """The LightningModule from plain, resolved copies of the model, loss and optim configs."""
    return MultiExitModule(model=to_plain(cfg.model), loss=to_plain(cfg.loss), optim=to_plain(cfg.optim),
                           run_config=to_plain(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the selected checkpoint, print the per-exit table. Returns the final metrics."""
    try:
        pl.seed_everything(cfg.seed, workers=True)
        # Everything that can reject the config is built before any data is touched or training starts.
        try:
            module = build_module(cfg)
            datamodule = build(cfg.data)
            callbacks, loggers = _build_group(cfg.get("callbacks")), _build_group(cfg.get("logger"))
            if not loggers:  # Lightning refuses an LR monitor without a logger
                callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
            trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
            datamodule.prepare_data()  # missing data is reported here, before the run starts
        except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as err:
            raise ConfigError(_describe(err)) from err

        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                report_exits(module, cfg, metrics, out_dir)
        search = next((cb for cb in trainer.callbacks if isinstance(cb, ThresholdSearch)), None)
        if trainer.is_global_zero and search is not None and search.result is not None:
            wall = report_dynamic(search, datamodule, cfg)
            for logger in trainer.loggers:
                logger.log_metrics(wall, step=trainer.global_step)
                logger.save()
            metrics.update(wall)
        return metrics
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()


def report_exits(module: MultiExitModule, cfg: DictConfig, metrics: dict[str, float], out_dir: Path) -> None:
    """Print and save the per-exit test table (cumulative MACs, params, top-1)."""
    shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    costs = measure_costs(module.net, shape)
    acc = {name: metrics.get(f"test/acc/{name}") for name in module.metric_names}
    rows = exit_rows(costs, acc)
    print_exit_table(rows, f"Per-exit test results ({cfg.task_name})", costs.plain_macs)
    (out_dir / "exit_table.json").write_text(json.dumps({"rows": rows, "costs": costs.to_dict()}, indent=2))


def report_dynamic(search: ThresholdSearch, datamodule, cfg: DictConfig) -> dict[str, float]:
    """Print the post-fit search's dynamic-inference summary; time the real predictor if asked."""
    timings = []
    if cfg.get("measure_wall_clock"):
        images = first_images(datamodule.test_dataloader(), int(cfg.timing.images))
        timings = measure_wall_clock(search.net, search.costs, search.result["thresholds"],
                                     search.result["temperatures"], images, cfg.timing.batch_sizes,
                                     cfg.timing.repeats, search.result["fallback"])
        search.result["wall_clock"] = [t.to_dict() for t in timings]
        save_thresholds(search.result, search.path)
    print_dynamic_summary(search.result, timings)
    return {f"test/wall/speedup_batch{t.batch_size}": t.wall_speedup for t in timings}


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
