"""Everything a run is built from: the LightningModule, the data, callbacks, loggers and the trainer, checked
before any work starts; and what a finished run writes (per-exit table, final checkpoint, summary).

The entry points (:mod:`~scan_lightning.train`, :mod:`~scan_lightning.phases`) and the tests build runs here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import LearningRateMonitor

from scan_lightning.checkpoints import network_state, read_checkpoint
from scan_lightning.config import ConfigError, build, to_plain
from scan_lightning.finetune import check_new_tensors_train, load_matching
from scan_lightning.inference.cost import measure_costs
from scan_lightning.logs import get_logger
from scan_lightning.module import MultiExitModule
from scan_lightning.report import exit_rows, render_exit_table

log = get_logger(__name__)
SUMMARY = "summary.json"  # written last by every finished run: its metrics and selected checkpoint


def describe_error(err: BaseException) -> str:
    """The innermost cause's message, and the config key it came from."""
    keys = re.findall(r"full_key: (\S+)", str(err))
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    msg = str(root).split("\n")[0] if isinstance(root, OmegaConfBaseException) else str(root)
    return f"{msg} (config key: {keys[-1]})" if keys else msg


def build_group(cfg: DictConfig | None) -> list:
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
                             teacher_model=teacher_model, compile=bool(cfg.get("compile", False)),
                             channels_last=bool(cfg.get("channels_last", False)))
    if teacher_ckpt is not None:
        module.teacher.load_state_dict(network_state(teacher_ckpt))
    if cfg.get("init_from"):
        new = load_matching(module.net, network_state(read_checkpoint(cfg.init_from)))
        check_new_tensors_train(module.net, new)
        if new:
            log.info(f"init_from: {len(new)} tensors are not in {cfg.init_from} and start fresh: {', '.join(new[:6])}"
                     f"{' ...' if len(new) > 6 else ''}")
    return module


def trainer_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``sync_batchnorm`` off where the accelerator has no use for it (CPU processes: gloo has no
    SyncBatchNorm), so ``trainer=ddp trainer.accelerator=cpu`` works as given."""
    accelerator = str(cfg.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (cfg.get("sync_batchnorm") and on_cpu):
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.sync_batchnorm = False
    log.info("trainer.sync_batchnorm: off, the processes run on CPUs (SyncBatchNorm needs GPU processes)")
    return cfg


def prepare(cfg: DictConfig, teacher_model: dict | None = None, check_data: bool = True
            ) -> tuple[MultiExitModule, pl.LightningDataModule, pl.Trainer]:
    """Build everything that can reject the config, then (``check_data``) check the data is there - all before
    training starts."""
    try:
        if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist (the checkpoint to resume from)")
        module = build_module(cfg, teacher_model)
        datamodule = build(cfg.data)
        if module.net.num_classes != datamodule.num_classes:
            raise ValueError(f"model.num_classes={module.net.num_classes} but the data has {datamodule.num_classes} "
                             f"classes (data.num_classes); leave model.num_classes at ${{data.num_classes}}")
        callbacks, loggers = build_group(cfg.get("callbacks")), build_group(cfg.get("logger"))
        if not loggers:  # Lightning refuses an LR monitor without a logger
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        trainer: pl.Trainer = build(trainer_config(cfg.trainer), callbacks=callbacks, logger=loggers or False)
        if check_data:   # missing or broken data, and splits that do not fit it, are reported before the run starts
            datamodule.prepare_data()
            datamodule.setup("fit")
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(describe_error(err)) from err
    return module, datamodule, trainer


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


def finished(run_dir: Path) -> bool:
    """The run in ``run_dir`` ran to its end (a summary written by a stopped run says ``status: interrupted``)."""
    path = Path(run_dir) / SUMMARY
    return path.is_file() and json.loads(path.read_text()).get("status", "finished") == "finished"


def resume_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint an unfinished run in ``run_dir`` resumes from: the newer of ``last.ckpt`` (epoch end) and
    ``interrupted.ckpt`` (a signal); ``None`` when it has neither."""
    saved = [p for p in (Path(run_dir) / "checkpoints" / n for n in ("last.ckpt", "interrupted.ckpt")) if p.is_file()]
    return str(max(saved, key=lambda p: p.stat().st_mtime)) if saved else None


def write_summary(out_dir: Path, metrics: dict[str, float], checkpoint: str | None, status: str = "finished",
                  extra: dict | None = None) -> None:
    """``summary.json``: the final metrics and the selected checkpoint, written last, so ``status: finished``
    marks a finished run; a stopped run writes what it has so far (``status: interrupted``)."""
    summary = {"status": status, "checkpoint": checkpoint, "metrics": metrics, **(extra or {})}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))


def report_exits(module: MultiExitModule, cfg: DictConfig, metrics: dict[str, float], out_dir: Path) -> list[dict]:
    """Log and save the per-exit test table (cumulative MACs, params, top-1); returns its rows."""
    shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    costs = measure_costs(module.net, shape)
    acc = {name: metrics.get(f"test/acc/{name}") for name in module.metric_names}
    rows = exit_rows(costs, acc)
    log.info(render_exit_table(rows, f"Per-exit test results ({cfg.task_name})", costs.plain_macs))
    (out_dir / "exit_table.json").write_text(json.dumps({"rows": rows, "costs": costs.to_dict()}, indent=2))
    return rows


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
