"""Real early exit (SCAN Algorithm 1) by batch compaction, and the equivalent rule on cached outputs.

Walk the exits shallow to deep; a sample leaves at the first exit whose max softmax (at that exit's
temperature) is above the exit's threshold; a sample no exit claims gets the ensemble (mean of all
exits' logits; the paper) or, with ``fallback="deepest"``, the deepest exit's answer. After each exit
only the undecided samples run the next section.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from scan_lightning.inference.cost import CostTable
from scan_lightning.inference.policy import (  # noqa: F401  (re-exported)
    FALLBACKS,
    ExitPolicy,
    check_fallback,
    check_thresholds,
    choose_exits,
    exit_confidence,
)
from scan_lightning.models.multi_exit import MultiExitNetwork, exit_input, take_samples

@dataclass
class EarlyExitResult:
    prediction: torch.Tensor   # (N,) class per sample
    exit_index: torch.Tensor   # (N,) 0..K-1, or K when no exit claimed the sample (fallback)
    macs: torch.Tensor         # (N,) MACs each sample paid (honest cumulative count)
    confidence: torch.Tensor   # (N,) max softmax of the answer (at its exit's temperature; the fallback's at 1)


class EarlyExitPredictor:
    """Runs only what each sample needs, as ``policy`` decides. ``costs`` gives the MACs a sample paid at its exit."""

    def __init__(self, net: MultiExitNetwork, policy: ExitPolicy, costs: CostTable) -> None:
        self.policy = policy.for_exits(net.num_exits)
        self.net = net.eval()
        cum = costs.cumulative_macs
        self.exit_macs = torch.cat([cum, cum[-1:]])  # the fallback ran everything

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> EarlyExitResult:
        n, k = x.shape[0], self.net.num_exits
        prediction = torch.empty(n, dtype=torch.long, device=x.device)
        confidence = torch.empty(n, device=x.device)
        exit_index = torch.full((n,), k, dtype=torch.long, device=x.device)
        alive = torch.arange(n, device=x.device)       # original indices of undecided samples
        logit_sum = None                               # running sum of their logits (for the ensemble)
        h, logits = x, None
        for i, section in enumerate(self.net.sections):
            h = section(h)
            logits, _ = self.net.forward_exit(i, h, logits)
            logit_sum = logits if logit_sum is None else logit_sum + logits
            conf, pred = self.policy.confidence(logits, i)
            fire = conf > self.policy.thresholds[i]
            if fire.any():
                prediction[alive[fire]] = pred[fire]
                confidence[alive[fire]] = conf[fire]
                exit_index[alive[fire]] = i
                keep = ~fire
                alive, h, logit_sum, logits = alive[keep], take_samples(h, keep), logit_sum[keep], logits[keep]
            if alive.numel() == 0:
                break
        if alive.numel():
            conf, pred = exit_confidence(logit_sum / k if self.policy.fallback == "ensemble" else logits)
            prediction[alive], confidence[alive] = pred, conf
        return EarlyExitResult(prediction, exit_index, self.exit_macs.to(x.device)[exit_index], confidence)


@torch.inference_mode()
def full_network(net: MultiExitNetwork, x: torch.Tensor) -> torch.Tensor:
    """The deepest exit alone: every section plus the deep head, no shallow exits (the plain network)."""
    for section in net.sections:
        x = section(x)
    return net.heads[-1](exit_input(x))[0]
