"""Where the Hydra configs are, the resolvers they use, and the one helper every object is built with."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """The run's configuration was rejected before any work started."""


class RunStopped(RuntimeError):
    """The run stopped early for a reason it names (the loss diverged, a signal); the entry point exits with
    ``exit_code`` (3; 128 + the signal number for signals)."""

    exit_code = 3


def config_dir() -> Path:
    """The ``conf/`` folder: inside the installed package (wheel), else the repository root (clone, editable)."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "conf"
    if (repo / "train.yaml").is_file():
        return repo
    raise FileNotFoundError(f"scan_lightning configs not found in {packaged} or {repo}")


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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sl.one_minus"):
        OmegaConf.register_new_resolver("sl.one_minus", _one_minus)
    if not OmegaConf.has_resolver("sl.if"):
        OmegaConf.register_new_resolver("sl.if", _if)
    if not OmegaConf.has_resolver("sl.run_id"):
        OmegaConf.register_new_resolver("sl.run_id", _run_id)


def build(cfg: DictConfig | dict, key: str | None = None, **kwargs: Any) -> Any:
    """Instantiate an object from a config node; a plain dict is placed under ``key`` so errors name it."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create({key: cfg})[key] if key else OmegaConf.create(cfg)
    return instantiate(cfg, **kwargs)


def to_plain(cfg: DictConfig) -> dict:
    """Resolved plain-data copy of a config (safe to pickle into checkpoints with weights_only=True)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


register_resolvers()
