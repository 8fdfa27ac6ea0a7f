"""training/callbacks/threshold_search.py: after fit, the post-fit threshold search writes thresholds.json next to the
best checkpoint (searched on validation, scored on test) and logs its dynamic-inference and wall-clock metrics
through the run's loggers and into the metrics train() returns."""
from __future__ import annotations

import pytest

from scan_lightning.evaluation.result import PostFitResult


def test_post_fit_search_writes_thresholds_beside_the_best_checkpoint(short_run):
    saved = short_run.thresholds
    assert saved["num_exits"] == 4 and len(saved["thresholds"]) == 4
    assert saved["fallback"] in ("ensemble", "deepest")
    assert {"val", "test", "budgeted", "anytime", "costs", "wall_clock", "cost", "ga", "model"} <= set(saved)
    assert len(saved["budgeted"]) == 40 and sum(saved["test"]["exit_fractions"]) == pytest.approx(1.0)
    # the file is the typed result's one form on disk: read back, it writes the same JSON
    assert PostFitResult.from_json(saved).to_json() == saved
    assert (short_run.ckpt.parent / "accuracy_vs_macs.png").is_file()
    assert (short_run.ckpt.parent / "exit_histogram.png").is_file()


def test_post_fit_search_logs_dynamic_and_wall_clock_metrics(short_run):
    columns = short_run.csv_columns
    for name in ("test/dynamic/accuracy", "test/dynamic/speedup_plain", "test/dynamic/exit_frac/exit1"):
        assert name in columns
    result = short_run.result
    # train() returns what the callback measured, for every batch size it timed
    assert [w.batch_size for w in result.wall_clock] == list(short_run.cfg.timing.batch_sizes)
    for w in result.wall_clock:
        assert short_run.metrics[f"test/wall/speedup_batch{w.batch_size}"] == pytest.approx(w.wall_speedup)
    assert short_run.metrics["test/dynamic/accuracy"] == pytest.approx(result.test.accuracy)


def test_a_result_written_before_the_redesign_still_loads(short_run):
    """Files of the earlier layout: the wall clock's baseline under "full", no plain_every_exit, no "model"."""
    old = short_run.thresholds
    for w in old["wall_clock"]:
        w["full"] = w.pop("plain")
        w["full_ms_per_image"] = w.pop("plain_ms_per_image")
    old["costs"].pop("plain_every_exit")
    old["latency"].pop("plain_every_exit")
    old.pop("model")
    result = PostFitResult.from_json(old)
    assert result.policy == short_run.result.policy and result.wall_clock == short_run.result.wall_clock
    assert result.costs == short_run.result.costs
