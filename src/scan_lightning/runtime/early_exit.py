"""Real early exit (SCAN Algorithm 1, Zhang et al. NeurIPS 2019; any exit rule) by batch compaction: one loop for
every batch size.

Walk the exits shallow to deep; a sample leaves at the first exit whose rule score
(:mod:`scan_lightning.policy.rules`: max softmax at that exit's temperature by default) is above the exit's
threshold; a sample no exit claims gets the ensemble (mean of all exits' logits; the paper) or, with
``fallback="deepest"``, the deepest exit's answer. After each exit only the undecided samples run the next
section (a batch of one simply stops), carrying the logits of the exits they passed when the rule reads them. An
exit branch no decision reads (threshold 1 with the deepest-exit fallback, no ISC and a rule that reads no earlier
exit) is not run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scan_lightning.cost.macs import CostTable
from scan_lightning.models.multi_exit import MultiExitNetwork, SectionOutput, take_samples
from scan_lightning.policy.exit_policy import ExitPolicy, exit_confidence
from scan_lightning.runtime.backend import Backend, run_plain
from scan_lightning.runtime.forms import as_deployed


@dataclass
class EarlyExitResult:
    """Per sample: the answer, where it was given, what it cost and how confident it was."""

    prediction: torch.Tensor   # (N,) class per sample
    exit_index: torch.Tensor   # (N,) 0..K-1, or K when no exit claimed the sample (fallback)
    macs: torch.Tensor         # (N,) MACs each sample paid (honest cumulative count)
    confidence: torch.Tensor   # (N,) the rule's score of the answer (max softmax: at its exit's temperature); the
                               # fallback's max softmax at 1


class EarlyExitRunner:
    """Runs only what each sample needs, as ``policy`` decides; ``costs`` gives the MACs a sample paid at its exit.

    ``net``: a :class:`MultiExitNetwork` (run as it is) or any :class:`~scan_lightning.runtime.backend.Backend`
    (a deployment form: eager, compiled, onnxruntime).
    """

    def __init__(self, net: MultiExitNetwork | Backend, policy: ExitPolicy, costs: CostTable) -> None:
        self.net = as_deployed(net)
        self.policy = policy.for_exits(self.net.num_exits)
        self.rule = policy.scorer()
        self.skipped = policy.skipped_heads(chained=self.net.isc is not None)   # branches no decision reads
        self.exit_macs = costs.exit_macs(torch.tensor(self.skipped))          # the fallback ran every section

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> EarlyExitResult:
        net, policy, k = self.net, self.policy, self.net.num_exits
        n, device = x.shape[0], x.device
        prediction = torch.empty(n, dtype=torch.long, device=device)
        confidence = torch.empty(n, device=device)
        exit_index = torch.full((n,), k, dtype=torch.long, device=device)
        alive = torch.arange(n, device=device)         # original indices of undecided samples
        logit_sum: torch.Tensor | None = None          # running sum of their logits (for the ensemble)
        h: SectionOutput = net.prepare(x)
        logits: torch.Tensor | None = None
        history: list[torch.Tensor] = []               # the logits the rule reads: every exit's, or the last
        for i in range(k):
            h = net.section(i, h)
            if self.skipped[i]:
                continue
            logits = net.exit(i, h, logits)
            logit_sum = logits if logit_sum is None or policy.fallback != "ensemble" else logit_sum + logits
            history = [*history, logits] if self.rule.reads_history else [logits]
            conf, pred = self.rule(i, history)
            fire = conf > policy.thresholds[i]
            if alive.numel() == 1:                     # one sample: it stops at its exit, nothing to compact
                if not fire.item():
                    continue
                prediction[alive], confidence[alive], exit_index[alive] = pred, conf, i
                break
            if fire.any():
                done = alive[fire]
                prediction[done], confidence[done], exit_index[done] = pred[fire], conf[fire], i
                keep = ~fire
                if not keep.any():
                    break
                alive, h, logit_sum, logits = alive[keep], take_samples(h, keep), logit_sum[keep], logits[keep]
                history = [past[keep] for past in history]
        else:
            assert logit_sum is not None and logits is not None      # the deepest exit always runs
            conf, pred = exit_confidence(logit_sum / k if policy.fallback == "ensemble" else logits)
            prediction[alive], confidence[alive] = pred, conf
        return EarlyExitResult(prediction, exit_index, self.exit_macs.to(device)[exit_index], confidence)


def plain_network(net: MultiExitNetwork | Backend, x: torch.Tensor) -> torch.Tensor:
    """The plain network's logits: every section plus the deep head, no shallow exits (see
    :func:`~scan_lightning.models.multi_exit.plain_runs_every_exit`)."""
    return run_plain(as_deployed(net), x)
