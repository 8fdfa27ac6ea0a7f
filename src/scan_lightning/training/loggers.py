"""A CSV logger that keeps what an earlier attempt of the same run wrote.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it opens a directory that has one, so resuming a run in its
own directory (or a rerun that then fails) loses the earlier rows. This one continues the file: it keeps the
earlier rows and header, and on resume drops only the rows logged after the checkpoint it resumes from.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

if TYPE_CHECKING:
    from lightning_fabric.loggers.csv_logs import _ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    def _header_on_disk(self) -> list[str]:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:   # Lightning deletes the file here; continue it instead
        self.metrics_keys = self._header_on_disk()

    def save(self) -> None:
        """Another process may have written the file since this writer read its header (``ddp_spawn``: fit and test
        run in children, each with a copy of the parent's writer): continue the header that is on disk."""
        if self.metrics:
            on_disk = self._header_on_disk()
            self.metrics_keys = on_disk + [k for k in self.metrics_keys if k not in on_disk]
        super().save()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger (same arguments, same files) that continues an existing ``metrics.csv``."""

    @property
    def experiment(self) -> _ExperimentWriter:
        """The writer of ``metrics.csv``, made on first use; it continues an existing file instead of deleting it."""
        if self._experiment is None:
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_rows_before(self, epoch: int, global_step: int) -> int:
        """Drop the rows a resumed run will log again: those of later epochs than ``epoch`` and of later steps
        than ``global_step`` (the trainer's position after restoring the checkpoint); returns how many."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return 0
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)

        def before(row: dict) -> bool:
            e = int(float(row["epoch"])) if row.get("epoch") else None
            s = int(float(row["step"])) if row.get("step") else 0
            return e is None or e < epoch or (e == epoch and s <= global_step)

        kept = [r for r in rows if before(r)]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        return len(rows) - len(kept)
