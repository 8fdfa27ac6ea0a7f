"""Read an offline W&B run back from its ``run-<id>.wandb`` file: a LevelDB-style log (32 KiB blocks of records with
a 7-byte header: CRC, length, type) of ``wandb.proto`` ``Record`` messages - what ``wandb sync`` uploads."""
from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data, pos, pending = Path(path).read_bytes(), HEADER, b""   # the file starts with ":W&B", magic, version
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:   # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind not in (FULL, FIRST, MIDDLE, LAST) or pos + HEADER + length > len(data):
            return   # zero padding, or a record W&B's service is still writing
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _apply(target: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    dir: Path
    run: pb.RunRecord | None = None
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    metrics: dict[str, pb.MetricRecord] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)

    def media(self, pattern: str) -> list[Path]:
        """Files the run wrote under ``files/media`` (``images/dynamic/*.png``, ``table/test/*.table.json``)."""
        return sorted((self.dir / "files" / "media").glob(pattern))


def finished_records(path: Path, timeout: float = 60.0) -> list[pb.Record]:
    """The records of a finished run. ``wandb.finish()`` returns before W&B's service has written the last records
    (offline, under load, ~1 s later): wait for the ``exit`` record.
    The file may be read while a record is half written: a record that runs past the end of the data, or does not
    parse yet, is read again on the next try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = list(records(path))
        except DecodeError:
            if time.monotonic() > deadline:
                raise
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_run(run_dir: Path) -> OfflineRun:
    """Config, summary, defined metrics, history rows and artifacts of the finished offline run in ``run_dir``."""
    out = OfflineRun(Path(run_dir))
    (path,) = Path(run_dir).glob("run-*.wandb")
    for rec in finished_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.run = rec.run
            for item in rec.run.config.update:
                _apply(out.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _apply(out.config, item)
        elif kind == "summary":
            for item in rec.summary.update:
                _apply(out.summary, item)
        elif kind == "metric":
            out.metrics[rec.metric.name or rec.metric.glob_name] = rec.metric
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _apply(row, item)
            out.history.append(row)
        elif kind == "artifact":
            out.artifacts.append(rec.artifact)
    return out
