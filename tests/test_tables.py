"""reporting/tables.py: a finished run saves its per-exit table (cumulative MACs, parameters and test top-1 of each exit and
the ensemble) as exit_table.json; the tables reach the run's logger (see test_train's fast_dev_run test)."""
from __future__ import annotations

import json

import pytest


def test_short_run_writes_the_per_exit_table(short_run):
    path = short_run.out / "exit_table.json"
    assert path.is_file()
    rows = json.loads(path.read_text())["rows"]
    names = ["exit1", "exit2", "exit3", "exit4", "ensemble"]
    assert [r["exit"] for r in rows] == names
    assert [r["top1"] for r in rows] == pytest.approx([short_run.metrics[f"test/acc/{n}"] for n in names])
