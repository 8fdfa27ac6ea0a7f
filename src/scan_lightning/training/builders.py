"""Everything a run is built from: the LightningModule, the data, callbacks, loggers and the trainer, checked
before any work starts; and what a finished run writes (per-exit table, final checkpoint, summary).

The entry points (:mod:`~scan_lightning.cli.train`, :mod:`~scan_lightning.training.phases`) and the tests build runs here.
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

from scan_lightning.cost.macs import measure_costs
from scan_lightning.data.base import input_shape
from scan_lightning.reporting.tables import exit_rows, render_exit_table
from scan_lightning.training.callbacks.meta_reweighting import MetaReweighting, l2w_term
from scan_lightning.training.checkpoints import architecture_only, network_state, read_checkpoint
from scan_lightning.training.finetune import check_new_tensors_train, initial_weights, load_matching
from scan_lightning.training.module import MultiExitModule
from scan_lightning.utils.config import ConfigError, build, to_plain
from scan_lightning.utils.logs import get_logger

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
        teacher_model = architecture_only(teacher_ckpt["hyper_parameters"]["model"])
    trainable = cfg.get("trainable")
    trainable = [trainable] if isinstance(trainable, str) else trainable
    module = MultiExitModule(model=to_plain(cfg.model), loss=to_plain(cfg.loss), optim=to_plain(cfg.optim),
                             run_config=to_plain(cfg), trainable=list(trainable) if trainable else None,
                             teacher_model=teacher_model, compile=bool(cfg.get("compile", False)),
                             channels_last=bool(cfg.get("channels_last", False)))
    # one image: Lightning's model summary then reports the network's FLOPs (twice its MACs) and layer sizes
    module.example_input_array = torch.zeros(1, *input_shape(cfg.data))
    if teacher_ckpt is not None:
        assert module.teacher is not None   # built from teacher_model above
        module.teacher.load_state_dict(network_state(teacher_ckpt))
    if cfg.get("init_from"):   # a checkpoint, or a state_dict of the network or of its torchvision backbone
        new = load_matching(module.net, initial_weights(module.net, to_plain(cfg.model), cfg.init_from))
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


def fill_from_data(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """Write what only the data can tell (``config_from_data``: an image folder's class count and names, its
    mean/std) into ``cfg.data``, in place: the model is then built for it (``${data.num_classes}``), and the saved
    config and the checkpoints' run config record it."""
    values = datamodule.config_from_data() if hasattr(datamodule, "config_from_data") else {}
    with open_dict(cfg):
        for key, value in values.items():
            cfg.data[key] = value


def prepare(cfg: DictConfig, teacher_model: dict | None = None, check_data: bool = True
            ) -> tuple[MultiExitModule, pl.LightningDataModule, pl.Trainer]:
    """Build everything that can reject the config, then (``check_data``) check the data is there - all before
    training starts. ``cfg.data`` gets what the data tells (:func:`fill_from_data`)."""
    try:
        if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist (the checkpoint to resume from)")
        datamodule = build(cfg.data)
        fill_from_data(cfg, datamodule)
        module = build_module(cfg, teacher_model)
        if module.net.num_classes != datamodule.num_classes:
            raise ValueError(f"model.num_classes={module.net.num_classes} but the data has {datamodule.num_classes} "
                             f"classes (data.num_classes); leave model.num_classes at ${{data.num_classes}}")
        callbacks, loggers = build_group(cfg.get("callbacks")), build_group(cfg.get("logger"))
        if not loggers:  # Lightning refuses an LR monitor without a logger
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        check_monitors(callbacks, module)
        try:   # a bad optimiser or scheduler setting fails here, not when fit starts
            module.configure_optimizers()
        except ValueError as err:
            raise ValueError(f"{err} (config key: optim.optimizer / optim.scheduler)") from None
        trainer: pl.Trainer = build(trainer_config(cfg.trainer), callbacks=callbacks, logger=loggers or False)
        if check_data:   # missing or broken data, and splits that do not fit it, are reported before the run starts
            datamodule.prepare_data()
            datamodule.setup("fit")
        check_callbacks_fit(callbacks, module, datamodule, trainer)
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(describe_error(err)) from err
    return module, datamodule, trainer


def check_callbacks_fit(callbacks: list, module: MultiExitModule, datamodule: pl.LightningDataModule,
                        trainer: pl.Trainer) -> None:
    """Callbacks that need something of the run check it (``check_run``), and a loss term that needs a callback has
    it: L2W's term without its meta step would train with weights that never learn."""
    for cb in callbacks:
        if hasattr(cb, "check_run"):
            cb.check_run(module, datamodule, trainer)
    if l2w_term(module) is not None and not any(isinstance(cb, MetaReweighting) for cb in callbacks):
        raise ValueError("the L2W loss term (SampleWeightedCrossEntropy) needs its meta step, "
                         "callbacks.meta_reweighting (method=l2w sets both)")


def check_monitors(callbacks: list, module: MultiExitModule) -> None:
    """A callback that monitors a metric (checkpoint selection, early stopping) names one this module logs."""
    logged = module.logged_metrics()
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if monitor is not None and monitor not in logged:
            raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which this run never logs; choose one of "
                             f"{sorted(n for n in logged if n.startswith('val/'))} (or a train/ metric)")


def final_checkpoint(trainer: pl.Trainer, out_dir: Path) -> str:
    """``last.ckpt`` when checkpointing ran; else (fast_dev_run, no checkpoint callback) the final weights, saved
    now so a later phase can start from them."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)   # ModelCheckpoint's (or another Checkpoint's)
    last = Path(dirpath) / "last.ckpt" if dirpath else None
    if last is not None and last.is_file():
        return str(last)
    path = out_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return str(path)


def finished(run_dir: Path) -> bool:
    """The run in ``run_dir`` ran to its end (a summary written by a stopped run says ``status: interrupted``)."""
    path = Path(run_dir) / SUMMARY
    return path.is_file() and json.loads(path.read_text()).get("status", "finished") == "finished"


# do not change what a run learns (the trainer's root dir follows the run dir: a sweep dir moved elsewhere still resumes)
RUN_NEUTRAL = ("paths", "logger", "ckpt_path", "callbacks", "optimized_metric", "trainer.default_root_dir")


def flat(tree: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> leaf value (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()} if tree else {prefix: {}}


def check_same_run(run_dir: Path, cfg: DictConfig) -> None:
    """Before a run dir's finished run is reused or its checkpoint resumed: the saved config must be this one
    (a sweep rerun in the same dir with other overrides would otherwise take another run's results). Keys the
    data filled in (``null`` here) and those in :data:`RUN_NEUTRAL` are not compared."""
    saved_path = Path(run_dir) / "config_resolved.yaml"
    if not saved_path.is_file():
        return
    saved = flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False))
    now = flat(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in set(saved) | set(now) if not k.startswith(tuple(f"{n}." for n in RUN_NEUTRAL))
                     and k.rstrip(".") not in RUN_NEUTRAL and now.get(k) is not None and saved.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k.rstrip('.')}={saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{run_dir} holds a run of another config ({shown}{', ...' if len(changed) > 5 else ''}); "
                          "choose a new run dir (hydra.run.dir=..., hydra.sweep.dir=... with -m), or resume it "
                          "explicitly with ckpt_path=...")


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
    shape = input_shape(cfg.data)
    costs = measure_costs(module.net, shape)
    acc = {name: metrics[f"test/acc/{name}"] for name in module.metric_names if f"test/acc/{name}" in metrics}
    rows = exit_rows(costs, acc)
    log.info(render_exit_table(rows, f"Per-exit test results ({cfg.task_name})", costs.plain_macs))
    (out_dir / "exit_table.json").write_text(json.dumps({"rows": rows, "costs": costs.to_dict()}, indent=2))
    return rows


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write ``cfg`` with every interpolation resolved to ``out_dir/config_resolved.yaml``, creating the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
