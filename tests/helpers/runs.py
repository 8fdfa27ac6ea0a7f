"""Running training as a user does: the smallest settings that still train, the CLI in a subprocess, a finished
short run's artefacts, and a callback that stops a run with SIGTERM at a chosen step."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from scan_lightning.evaluation.result import PostFitResult

# the smallest network that still learns the synthetic classes
FAST = ("data=synthetic", "model.backbone.width=0.125", "model.bottleneck_width=8")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m scan_lightning.train *args`` in ``cwd`` (its outputs under ``cwd/logs``), waited for."""
    env = {**os.environ, "SCAN_ROOT": str(cwd), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "scan_lightning.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def start_run(tmp_path: Path, *args: str) -> subprocess.Popen:
    """A FAST training run with CSV logging in ``tmp_path/run``, started in the background (not waited for)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCAN_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "scan_lightning.train", *FAST, "timing.enabled=false",
                             "logger=csv", "hydra.run.dir=" + str(tmp_path / "run"), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts background jobs (``make test &``)
    with SIGINT ignored and children inherit that, so a run would ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM after training step ``step``: a signal that lands mid-epoch, deterministically.
    Added to a run as ``+callbacks.sigterm._target_=tests.helpers.runs.SigtermAtStep``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class ShortRun:
    """A finished training run (the ``short_run`` fixture): its config, output dir and returned metrics."""

    cfg: DictConfig
    out: Path
    metrics: dict[str, float]

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"

    @property
    def csv_columns(self) -> list[str]:
        """The header of the CSV logger's metrics file."""
        with open(self.out / "csv" / "metrics.csv") as f:
            return next(csv.reader(f))

    @property
    def thresholds(self) -> dict:
        """The post-fit search's result as written, ``thresholds.json`` next to the best checkpoint."""
        return json.loads((self.out / "checkpoints" / "thresholds.json").read_text())

    @property
    def result(self) -> PostFitResult:
        """The post-fit search's result, read back from ``thresholds.json``."""
        return PostFitResult.load(self.out / "checkpoints" / "thresholds.json")
