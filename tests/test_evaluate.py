"""cli/evaluate.py: evaluating a trained checkpoint with the thresholds saved beside it, with given thresholds, and
refusing thresholds of the wrong count or for another network, or a missing checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scan_lightning.cli.evaluate import evaluate
from scan_lightning.evaluation.result import PostFitResult
from tests.helpers.compose import compose_evaluate

TIMING = ("timing.images=32", "timing.repeats=1")


def test_evaluate_reuses_the_saved_thresholds(short_run, tmp_path):
    saved = evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", f"output={tmp_path / 'result.json'}", *TIMING))
    result = short_run.result
    assert saved.policy == result.policy and saved.search is None          # scored, not searched again
    assert saved.test.accuracy == pytest.approx(result.test.accuracy)
    assert saved.costs == result.costs                                     # the same network, the same cost table
    assert PostFitResult.load(tmp_path / "result.json") == saved            # output= writes the same result


def test_evaluate_with_given_thresholds(short_run):
    given = evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", "policy.thresholds=[1.0,1.0,1.0,0.01]", *TIMING))
    assert given.test.exit_fractions[3] == 1.0
    assert given.test.accuracy == pytest.approx(short_run.metrics["test/acc/exit4"])


def test_evaluate_refuses_thresholds_for_another_network(short_run, tmp_path):
    with pytest.raises(ValueError, match="got 3 thresholds"):
        evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", "policy.thresholds=[0.9,0.9,0.9]"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"num_exits": 3, "thresholds": [0.9] * 3}))
    with pytest.raises(ValueError, match="another model"):
        evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", f"policy.thresholds_path={other}"))


def test_cli_evaluate_rejects_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scan_lightning.evaluate", f"ckpt_path={tmp_path / 'nope.ckpt'}"],
                          cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "nope.ckpt does not exist" in proc.stderr


def test_evaluate_searches_again_when_asked(short_run):
    fresh = evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", "policy.thresholds=search", "search.ga.generations=3",
                                      "search.budget_steps=4", "timing.enabled=false"))
    assert fresh.search is not None and fresh.search.settings["generations"] == 3 and len(fresh.budgeted) == 4


@pytest.mark.parametrize("overrides,needle", [
    (("policy.thresholds=[0.9,0.9,0.9,0.9]", "policy.thresholds_path=x.json"), "either policy.thresholds or"),
    (("policy.thresholds=search", "policy.temperatures=[2,2,2,2]"), "takes no policy.temperatures"),
    (("policy.thresholds=fast",), "must be a list with one value per exit or search"),
])
def test_a_bad_policy_node_is_one_clear_error_before_the_checkpoint_is_read(tmp_path, overrides, needle):
    with pytest.raises(ValueError, match=needle):   # the checkpoint does not even exist: nothing was read
        evaluate(compose_evaluate(f"ckpt_path={tmp_path / 'never_read.ckpt'}", *overrides))
