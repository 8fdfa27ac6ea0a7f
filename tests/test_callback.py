"""callbacks/threshold_search.py: after fit, the post-fit threshold search writes thresholds.json next to the best
checkpoint (searched on validation, scored on test) and logs its dynamic-inference and wall-clock metrics through
the run's loggers."""
from __future__ import annotations

import pytest


def test_post_fit_search_writes_thresholds_beside_the_best_checkpoint(short_run):
    result = short_run.thresholds
    assert result["num_exits"] == 4 and len(result["thresholds"]) == 4
    assert result["fallback"] in ("ensemble", "deepest")
    assert {"val", "test", "budgeted", "anytime", "costs", "wall_clock"} <= set(result)
    assert len(result["budgeted"]) == 40 and sum(result["test"]["exit_fractions"]) == pytest.approx(1.0)


def test_post_fit_search_logs_dynamic_and_wall_clock_metrics(short_run):
    columns = short_run.csv_columns
    for name in ("test/dynamic/accuracy", "test/dynamic/speedup_plain", "test/dynamic/exit_frac/exit1"):
        assert name in columns
    assert short_run.metrics["test/wall/speedup_batch1"] > 0
