"""Reading Lightning checkpoints of :class:`~scan_lightning.training.module.MultiExitModule` and plain ``state_dict`` files as
plain data."""
from __future__ import annotations

from pathlib import Path
from typing import TypeGuard

import torch

from scan_lightning.policy.settings import SearchSettings


def load_plain(path: str | Path) -> object:
    """A file written by ``torch.save``, loaded as plain data (``weights_only=True``) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated, corrupt, or pickled objects beyond plain data
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {str(path)!r} cannot be read as plain data: it is truncated, corrupt or not a "
                         f"scan_lightning checkpoint ({reason[:160]})") from None


def is_module_checkpoint(checkpoint: object) -> TypeGuard[dict]:
    """Whether loaded data is a module checkpoint: a dict with ``state_dict`` and ``hyper_parameters``."""
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint and "hyper_parameters" in checkpoint


def read_checkpoint(path: str | Path) -> dict:
    """A module checkpoint, loaded as plain data (``weights_only=True``) on the CPU."""
    checkpoint = load_plain(path)
    missing = [k for k in ("state_dict", "hyper_parameters") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing or not isinstance(checkpoint, dict):   # not a dict: both are missing
        raise ValueError(f"checkpoint {str(path)!r} is not a scan_lightning checkpoint (it has no {missing[0]!r}); "
                         f"use one written by python -m scan_lightning.train")
    return checkpoint


def network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The multi-exit network's weights (``net.*``) from a module checkpoint, prefix removed."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors to start from (``init_from``) and whether they come from a module checkpoint: its network's (``net.*``,
    prefix removed), or a plain ``state_dict`` file as saved (``torch.save(model.state_dict())``)."""
    content = load_plain(path)
    if is_module_checkpoint(content):
        return network_state(content), True
    if isinstance(content, dict) and content and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in content.items()):
        return content, False
    raise ValueError(f"checkpoint {str(path)!r} is not a scan_lightning checkpoint nor a state_dict (a dict of "
                     f"tensors, torch.save(model.state_dict())); use one written by python -m scan_lightning.train")


def architecture_only(model: dict) -> dict:
    """A model config without pretrained weights (``backbone.weights``): a checkpoint's own weights replace them, so
    loading it does not need the pretrained file."""
    backbone = model.get("backbone")
    if not isinstance(backbone, dict) or backbone.get("weights") is None:
        return model
    return {**model, "backbone": {**backbone, "weights": None}}


def selected_checkpoint(trainer) -> str:
    """The checkpoint model selection chose in this fit (``ModelCheckpoint``'s best by its validation metric);
    ``""`` when there is none (fast_dev_run, checkpointing off)."""
    cb = trainer.checkpoint_callback
    return cb.best_model_path if cb is not None and cb.best_model_path else ""


def recorded_checkpoint(run_dir: str | Path) -> str | None:
    """The checkpoint a finished run selected and tested, as its ``summary.json`` records it (``None``: no run)."""
    import json

    summary = Path(run_dir) / "summary.json"
    return json.loads(summary.read_text()).get("checkpoint") if summary.is_file() else None


def selected_val_accuracy(run_dir: str | Path) -> float:
    """A finished run's model-selection score: the validation accuracy its selected checkpoint was chosen by
    (``ModelCheckpoint``'s monitored ``val/acc/...``). SCAN's GA baseline is the plain baseline network's accuracy;
    this reads it from the baseline run (``search.ga.baseline=<run dir>``), never from its test set."""
    if not (Path(run_dir) / "summary.json").is_file():
        raise FileNotFoundError(f"search.ga.baseline={run_dir}: no finished run there ({Path(run_dir) / 'summary.json'} "
                                "is missing); give a baseline run directory, 'deepest', 'ensemble' or an accuracy "
                                "in [0, 1]")
    selected = recorded_checkpoint(run_dir)
    if not selected:
        raise ValueError(f"search.ga.baseline={run_dir}: the run selected no checkpoint (e.g. a fast_dev_run)")
    for key, state in read_checkpoint(selected).get("callbacks", {}).items():
        monitor = state.get("monitor") if isinstance(state, dict) else None
        if key.startswith("ModelCheckpoint") and monitor and monitor.startswith("val/acc/"):
            if state.get("best_model_score") is not None:
                return float(state["best_model_score"])
    raise ValueError(f"search.ga.baseline={run_dir}: its checkpoint {selected} records no val/acc/* selection score")


def resolve_baseline(settings: SearchSettings) -> SearchSettings:
    """The search settings with a GA baseline that names a run directory read as that run's selected validation
    accuracy (SCAN's rule: the plain baseline network's accuracy), so the search itself loads no checkpoint."""
    run = settings.ga.baseline_run
    return settings if run is None else settings.with_baseline(selected_val_accuracy(run), run)
