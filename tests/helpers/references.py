"""Hand-written references the library is checked against: the KL term written out in plain Python, and
Algorithm 1 (SCAN: leave at the first exit whose confidence exceeds its threshold, else the fallback) applied
sample by sample to every exit's output."""
from __future__ import annotations

import math

import torch

from scan_lightning.cost import measure_costs
from scan_lightning.policy import ExitPolicy, exit_confidence
from scan_lightning.runtime import EarlyExitRunner


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """sum_c p_t * (log p_t - log p_s), averaged over the batch, times T^2 - written out in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for sv, tv in zip(s_row, t_row):
            pt, ps = math.exp(tv / t) / zt, math.exp(sv / t) / zs
            total += pt * (math.log(pt) - math.log(ps))
    return total / len(student) * t * t


def compute_all_then_choose(net, x, thresholds, fallback="ensemble"):
    """Reference: full forward, then Algorithm 1 sample by sample in plain Python."""
    with torch.no_grad():
        out = net(x)
    preds, exits = [], []
    for n in range(x.shape[0]):
        for i, lg in enumerate(out.logits):
            conf, cls = exit_confidence(lg[n:n + 1])
            if conf.item() > thresholds[i]:
                preds.append(cls.item()), exits.append(i)
                break
        else:
            last = out.ensemble if fallback == "ensemble" else out.logits[-1]
            preds.append(last[n].argmax().item()), exits.append(len(out.logits))
    return torch.tensor(preds), torch.tensor(exits)


def assert_predictor_matches_median_thresholds(net, x: torch.Tensor) -> None:
    """At each exit's median confidence, the real predictor takes the same exits and answers as
    computing every exit; at least two different exits are used."""
    with torch.no_grad():
        conf = torch.stack([exit_confidence(lg)[0] for lg in net(x).logits])
    thresholds = conf.median(1).values.tolist()
    result = EarlyExitRunner(net, ExitPolicy.create(thresholds), measure_costs(net, tuple(x.shape[1:])))(x)
    pred, exits = compute_all_then_choose(net, x, thresholds)
    assert torch.equal(result.exit_index, exits) and torch.equal(result.prediction, pred)
    assert len(set(exits.tolist())) >= 2
