"""Multi-phase runs (IMTA's two-phase schedule): one command, one output dir per phase, resumable.

``phases`` maps a phase name to a config *delta* merged onto the run config (minus ``phases``), in
order. Inside a delta, ``init_from`` and ``teacher`` may name an earlier phase: they become that phase's
selected checkpoint. Every phase's config is checked before the first one starts. Rerunning the command
with the same output dir skips finished phases (their ``summary.json`` exists) and resumes an
interrupted one from the newer of its ``checkpoints/last.ckpt`` and ``checkpoints/interrupted.ckpt``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf, open_dict

from scan_lightning.training.builders import SUMMARY, finished, prepare, resume_checkpoint, save_resolved_config
from scan_lightning.training.checkpoints import recorded_checkpoint
from scan_lightning.training.finetune import check_new_tensors_train, load_matching
from scan_lightning.utils.config import ConfigError, build, to_plain
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)
PHASE_REFERENCES = ("init_from", "teacher")


def phase_config(cfg: DictConfig, name: str, earlier: list[str], base_dir: Path) -> DictConfig:
    """The run config of phase ``name``: base config + its delta, output under ``base_dir/name``."""
    delta = cfg.phases[name]
    if delta is not None and not isinstance(delta, DictConfig):
        raise ConfigError(f"phases.{name} must be a mapping of config changes, got {delta!r}")
    base = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "phases"])
    phase = cast(DictConfig, OmegaConf.merge(base, delta or {}))   # merged onto a DictConfig: a DictConfig
    with open_dict(phase):
        phase.phases = None
        phase.paths.output_dir = str(base_dir / name)
        for key in PHASE_REFERENCES:
            value = phase.get(key)
            if value in cfg.phases and value not in earlier:
                raise ConfigError(f"phases.{name}.{key}={value!r} must name an earlier phase; earlier: {earlier}")
        if phase.get("logger") and phase.logger.get("wandb") and not phase.logger.wandb.get("name"):
            phase.logger.wandb.name = f"{cfg.task_name}-{name}"
    return phase


def check_phases(cfg: DictConfig, base_dir: Path) -> dict[str, DictConfig]:
    """Compose and build every phase (a later phase's teacher and init_from from the earlier phase's model
    config), so a bad setting in any phase stops the run before the first one starts."""
    phases: dict[str, DictConfig] = {}
    for name in cfg.phases:
        phase = phase_config(cfg, name, list(phases), base_dir)
        teacher = phase.get("teacher")
        teacher_model = to_plain(phases[teacher].model) if teacher in phases else None
        check = phase.copy()
        source = phases.get(phase.get("init_from"))
        with open_dict(check):
            if source is not None:
                check.init_from = None   # an earlier phase's weights do not exist yet: match its architecture instead
        try:
            # the first phase's data is checked when it starts; a later phase's here, if it differs
            other_data = bool(phases) and to_plain(phase.data) != to_plain(next(iter(phases.values())).data)
            module, _, _ = prepare(check, teacher_model, check_data=other_data)
            if source is not None:
                check_new_tensors_train(module.net, load_matching(module.net, build(source.model).state_dict()))
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"phase {name}: {err}") from None
        phases[name] = phase
    return phases


def run_phases(cfg: DictConfig, run: Callable[[DictConfig], dict[str, float]]) -> dict[str, float]:
    """Run the phases in order with ``run`` (train one config) after checking each (module, data and trainer
    built); return the last phase's metrics."""
    base_dir = Path(cfg.paths.output_dir)
    if not isinstance(cfg.phases, DictConfig) or not cfg.phases:
        raise ConfigError(f"phases must map phase names to config changes, got {cfg.phases!r}")
    phases = check_phases(cfg, base_dir)
    save_resolved_config(cfg, base_dir)
    metrics: dict[str, float] = {}
    for i, (name, phase) in enumerate(phases.items(), 1):
        phase_dir = base_dir / name
        if finished(phase_dir):
            log.info(f"== phase {name} ({i}/{len(phases)}) already finished in {phase_dir}: skipped")
            metrics = json.loads((phase_dir / SUMMARY).read_text())["metrics"]
            continue
        with open_dict(phase):
            for key in PHASE_REFERENCES:
                if phase.get(key) in phases:
                    phase[key] = recorded_checkpoint(base_dir / phase[key])
            resume = resume_checkpoint(phase_dir)
            if resume and not phase.get("ckpt_path"):
                phase.ckpt_path = resume
        resumed = f", resuming from {phase.ckpt_path}" if phase.get("ckpt_path") else ""
        log.info(f"== phase {name} ({i}/{len(phases)}): output in {phase_dir}{resumed}")
        metrics = run(phase)
    return metrics
