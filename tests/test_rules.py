"""Each exit rule's decision on inputs worked out by hand, by the torch module (``RuleScore``, which the cached
scoring, the eager runner and TorchScript run) and by the ONNX runner's numpy restatement; bad rule input is one
clear error naming the bad value."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scan_lightning.export.onnx_runner import RuleScorer
from scan_lightning.policy import ExitPolicy
from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.rules import ExitRule, patience_thresholds, rule_outputs
from scan_lightning.policy.scoring import cached_early_exit


def scores(rule: ExitRule, logits: torch.Tensor, temperatures: list[float] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's ``(score, prediction)`` ((K, N) each) on ``logits`` (K, N, C) from ``RuleScore``, after checking the
    ONNX runner's numpy scorer gives the same."""
    k = logits.shape[0]
    temps = temperatures or [1.0] * k
    score, pred = rule_outputs(rule.module(temps), logits)
    numpy_scorer = RuleScorer({"temperatures": temps, **rule.to_dict()}, k)
    history = [lg.numpy() for lg in logits]
    for i in range(k):
        s, p = numpy_scorer(i, history[: i + 1] if numpy_scorer.reads_history else history[i:i + 1])
        np.testing.assert_allclose(s, score[i].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(p, pred[i].numpy())
    return score, pred


def from_probabilities(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax at temperature 1 is each of ``rows`` (one sample per exit): ``(K, 1, C)``."""
    return torch.log(torch.tensor(rows, dtype=torch.float32))[:, None]


def one_hot_logits(classes: list[int], num_classes: int = 6) -> torch.Tensor:
    """One sample whose argmax at exit k is ``classes[k]``: ``(K, 1, C)``."""
    logits = torch.zeros(len(classes), 1, num_classes)
    for k, c in enumerate(classes):
        logits[k, 0, c] = 3.0
    return logits


def test_patience_counts_unchanged_argmaxes_and_fires_at_the_patience():
    logits = one_hot_logits([3, 3, 5, 5, 5])
    score, pred = scores(ExitRule("patience"), logits)
    # PABEE's counter: 0, 1 (3 again), 0 (changed to 5), 1, 2; the score is counter / K
    assert score[:, 0].tolist() == pytest.approx([0, 1 / 5, 0, 1 / 5, 2 / 5])
    assert pred[:, 0].tolist() == [3, 3, 5, 5, 5]
    policy = ExitPolicy.create(patience_thresholds(2, 5), fallback="deepest", rule=ExitRule("patience"))
    assert policy.thresholds == (1.5 / 5,) * 5
    prediction, exit_index = cached_early_exit(ExitCache(logits, torch.tensor([0])), policy)
    assert exit_index.tolist() == [4] and prediction.tolist() == [5]          # patience 2 reached at exit index 4
    # patience 1 leaves at the first repeat (exit index 1); patience K never fires: the fallback answers
    policy1 = policy.with_thresholds(patience_thresholds(1, 5))
    assert cached_early_exit(ExitCache(logits, torch.tensor([0])), policy1)[1].tolist() == [1]
    steady = one_hot_logits([2] * 5)
    policy5 = policy.with_thresholds(patience_thresholds(5, 5))
    assert scores(ExitRule("patience"), steady)[0][:, 0].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert cached_early_exit(ExitCache(steady, torch.tensor([0])), policy5)[1].tolist() == [5]


def test_entropy_is_normalised_negentropy():
    score, _ = scores(ExitRule("entropy"), torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[60.0, 0.0, 0.0, 0.0]]]))
    assert score[0, 0].item() == pytest.approx(0.0, abs=1e-6)                # uniform: H = log C
    assert score[1, 0].item() == pytest.approx(1.0, abs=1e-6)                # one-hot: H = 0
    score, _ = scores(ExitRule("entropy"), from_probabilities([0.5, 0.25, 0.25]))
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))                   # 1.5 log 2
    assert score[0, 0].item() == pytest.approx(1 - h / math.log(3), abs=1e-6)


def test_margin_is_top1_minus_top2():
    score, pred = scores(ExitRule("margin"), from_probabilities([0.1, 0.6, 0.3]))
    assert score[0, 0].item() == pytest.approx(0.3, abs=1e-6) and pred[0, 0].item() == 1


def test_max_softmax_at_a_temperature():
    logits = torch.tensor([[[2.0, 1.0, 0.0]]])
    score, pred = scores(ExitRule("max_softmax"), logits, [2.0])
    assert score[0, 0].item() == pytest.approx(math.e / (math.e + math.exp(0.5) + 1), abs=1e-6)
    assert pred[0, 0].item() == 0
    assert scores(ExitRule("max_softmax"), logits)[0][0, 0].item() == pytest.approx(
        math.exp(2) / (math.exp(2) + math.e + 1), abs=1e-6)


def test_running_ensemble_selecting_one_exit_is_that_exits_max_softmax():
    logits = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0)) * 2
    temps = [0.7, 1.3, 2.0]
    rule = ExitRule("running_ensemble", {"weights": [[1.0], [0.0, 1.0], [0.0, 1.0, 0.0]]})
    score, pred = scores(rule, logits, temps)
    alone = torch.softmax(logits[1] / temps[1], -1).max(-1)
    torch.testing.assert_close(score[2], alone.values)
    torch.testing.assert_close(score[1], alone.values)
    assert torch.equal(pred[2], alone.indices) and torch.equal(pred[2], logits[1].argmax(-1))


def test_running_ensemble_is_the_normalised_weighted_geometric_mean():
    p0, p1 = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    rule = ExitRule("running_ensemble", {"weights": [[1.0], [0.5, 0.5]]})
    score, pred = scores(rule, from_probabilities(p0, p1))
    q = [math.sqrt(a * b) for a, b in zip(p0, p1)]                          # sqrt(.14), sqrt(.06), sqrt(.05)
    assert score[1, 0].item() == pytest.approx(max(q) / sum(q), abs=1e-6)
    assert pred[1, 0].item() == 0                                            # the ensemble's class, not exit 1's (2)


def test_learned_is_the_sigmoid_of_the_scheduler():
    p0, p1 = [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]                               # both exits predict class 0
    a, b = [1.0, -2.0, 0.5, 3.0], -1.5
    rule = ExitRule("learned", {"scheduler": [[0.0, 0.0, 0.0, 0.0, 0.0], [*a, b]]})
    score, pred = scores(rule, from_probabilities(p0, p1))
    negentropy = 1 + sum(p * math.log(p) for p in p1) / math.log(3)
    features = [0.6, 0.6 - 0.3, negentropy, 1.0]                             # max prob, margin, negentropy, agreement
    z = sum(w * f for w, f in zip(a, features)) + b
    assert score[1, 0].item() == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6) and pred[1, 0].item() == 0
    assert score[0, 0].item() == pytest.approx(0.5, abs=1e-6)                # zero scheduler: sigmoid(0)
    # an earlier exit that disagrees drops the agreement feature to 0
    score, _ = scores(rule, from_probabilities([0.2, 0.5, 0.3], p1))
    assert score[1, 0].item() == pytest.approx(1 / (1 + math.exp(-(z - 3.0))), abs=1e-6)


@pytest.mark.parametrize("make,needle", [
    (lambda: ExitRule("pabee"), r"rule='pabee' is not allowed; choose one of \['max_softmax'"),
    (lambda: ExitRule("running_ensemble", {"weights": [[1.0], [0.5, -0.1]]}),
     r"running_ensemble weights row 1 = \[0.5, -0.1\]: row k must hold k \+ 1 weights >= 0"),
    (lambda: ExitRule("running_ensemble", {"weights": [[1.0], [0.5]]}), r"weights row 1 = \[0.5\]"),
    (lambda: ExitPolicy.create([0.5] * 3, rule=ExitRule("running_ensemble", {"weights": [[1.0], [0.5, 0.5]]})),
     "rule running_ensemble holds weights for 2 exits, but the network has 3"),
    (lambda: ExitPolicy.create([0.5] * 2, rule=ExitRule("learned", {"scheduler": [[0.0] * 5] * 3})),
     "rule learned holds scheduler for 3 exits, but the network has 2"),
    (lambda: ExitRule("learned", {"scheduler": [[0.0] * 5, [1.0, 2.0]]}),
     r"learned scheduler rows must hold 5 numbers .* got \[1.0, 2.0\]"),
    (lambda: patience_thresholds(0, 4), r"patience=0 must be an integer in 1..4"),
    (lambda: patience_thresholds(5, 4), r"patience=5 must be an integer in 1..4"),
    (lambda: ExitRule("patience", {"weights": [[1.0]]}),
     r"rule patience takes parameters none; got \['weights'\] \(weights belong to rule running_ensemble\)"),
    (lambda: ExitRule("margin", {"scheduler": [[0.0] * 5]}), r"rule margin takes parameters none; got \['scheduler'\]"),
    (lambda: ExitPolicy.create([0.5] * 2, rule=ExitRule("learned")), "rule learned needs its fitted scheduler"),
])
def test_bad_rule_input_is_one_clear_error(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()
