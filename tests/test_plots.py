"""reporting/plots.py: the post-fit search of a run draws accuracy vs MACs and the exit histogram next to thresholds.json."""
from __future__ import annotations


def test_post_fit_search_draws_both_plots(short_run):
    plots = short_run.out / "checkpoints"
    assert (plots / "accuracy_vs_macs.png").stat().st_size > 1000
    assert (plots / "exit_histogram.png").is_file()
