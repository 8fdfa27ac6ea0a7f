"""Where the Hydra configs are, the resolvers they use, and the one helper every object is built with."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from hydra.conf import HydraConf


class ConfigError(ValueError):
    """The run's configuration was rejected before any work started."""


class RunStopped(RuntimeError):
    """The run stopped early for a reason it names (the loss diverged, a signal); the entry point exits with
    ``exit_code`` (3; 128 + the signal number for signals)."""

    exit_code = 3


def _one_minus(alpha: float) -> float:
    """``1 - alpha`` for SCAN Eq. 1, where alpha (the KD weight) must lie in [0, 1]."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} (the KD weight, loss.terms.kd.weight) must lie in [0, 1]")
    return 1.0 - alpha


def _if(condition: Any, then: Any, otherwise: Any) -> Any:
    """``${sl.if:${flag},a,b}``: a switch in config (e.g. IMTA's OFA on/off) that sets other values."""
    if not isinstance(condition, bool):
        raise ValueError(f"sl.if needs true or false, got {condition!r}")
    return then if condition else otherwise


def _run_id(output_dir: str) -> str:
    """``${sl.run_id:${paths.output_dir}}``: a W&B run id fixed by the run directory, so a run resumed in its own
    directory continues the same W&B run (and its curves) while every other directory gets its own."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def _multirun_job() -> HydraConf | None:
    """The Hydra config of the multirun job this process runs (``-m``; a sweep); ``None`` for a single run or
    outside Hydra (tests, Python calls)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    return hydra_cfg if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN else None


def _sweep_group(task_name: str) -> str:
    """``${sl.sweep_group:${task_name}}``: the W&B group, one per sweep (``<task>-<sweep dir name>``, e.g.
    ``train-2024-05-01_12-00-00``) so a sweep's jobs compare side by side; a single run's is the task name."""
    job = _multirun_job()
    return f"{task_name}-{Path(job.sweep.dir).name}" if job is not None else task_name


def _job_name() -> str | None:
    """``${sl.job_name:}``: a multirun job's W&B run name, its overrides (Hydra's ``override_dirname``, e.g.
    ``loss.terms.kd.weight=0.3``); ``None`` (W&B's own name) for a single run."""
    job = _multirun_job()
    return (job.job.override_dirname or None) if job is not None else None


def _sweep_tags(tags: Any) -> list[str]:
    """``${sl.sweep_tags:${tags}}``: the run's ``tags``, plus ``multirun`` for a sweep's jobs."""
    return [str(t) for t in (tags or [])] + (["multirun"] if _multirun_job() is not None else [])


def register_resolvers() -> None:
    """Register the ``sl.*`` OmegaConf resolvers the configs use, skipping those already registered (run on import)."""
    if not OmegaConf.has_resolver("sl.one_minus"):
        OmegaConf.register_new_resolver("sl.one_minus", _one_minus)
    if not OmegaConf.has_resolver("sl.if"):
        OmegaConf.register_new_resolver("sl.if", _if)
    if not OmegaConf.has_resolver("sl.run_id"):
        OmegaConf.register_new_resolver("sl.run_id", _run_id)
    for name, resolver in (("sl.sweep_group", _sweep_group), ("sl.job_name", _job_name), ("sl.sweep_tags", _sweep_tags)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def build(cfg: DictConfig | dict, key: str | None = None, **kwargs: Any) -> Any:
    """Instantiate an object from a config node; a plain dict is placed under ``key`` so errors name it."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create({key: cfg})[key] if key else OmegaConf.create(cfg)
    return instantiate(cfg, **kwargs)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-data copy of a config node (safe to pickle into checkpoints with weights_only=True)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if not isinstance(plain, dict):
        raise ValueError(f"expected a config mapping, got {type(plain).__name__}")
    return {str(k): v for k, v in plain.items()}


register_resolvers()
