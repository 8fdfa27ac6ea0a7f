"""All exits' logits on a dataset, computed once; threshold searches are pure tensor work on them."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from rich.progress import track

from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.policy.exit_policy import ExitPolicy, check_fallback, exit_confidence
from scan_lightning.policy.rules import ExitRule, rule_outputs
from scan_lightning.utils.modes import eval_mode


@dataclass
class ExitCache:
    """Every exit's logits on a dataset (``(K, N, C)``) and its labels, computed once."""
    logits: torch.Tensor   # (K, N, C)
    labels: torch.Tensor   # (N,)

    @property
    def num_exits(self) -> int:
        """Exits of the network the logits came from."""
        return self.logits.shape[0]

    def confidence(self, temperatures: Sequence[float] | None = None) -> torch.Tensor:
        """(K, N) max softmax per exit at its temperature."""
        temps = temperatures or [1.0] * self.num_exits
        return torch.stack([exit_confidence(lg, t)[0] for lg, t in zip(self.logits, temps)])

    def correct(self) -> torch.Tensor:
        """(K + 1, N) booleans: is each exit, then the ensemble, right on each sample."""
        preds = torch.cat([self.logits.argmax(-1), self.logits.mean(0).argmax(-1)[None]])
        return preds == self.labels[None]

    def outcome(self, fallback: str = "ensemble") -> torch.Tensor:
        """(K + 1, N): is each exit right, then the prediction for samples no exit claims (``fallback``)."""
        check_fallback(fallback)
        correct = self.correct()
        return correct if fallback == "ensemble" else torch.cat([correct[:-1], correct[-2:-1]])

    def decisions(self, rule: ExitRule | ExitPolicy | None = None, temperatures: Sequence[float] | None = None,
                  fallback: str = "ensemble") -> tuple[torch.Tensor, torch.Tensor]:
        """What an exit rule sees and gives on these outputs: ``(K, N)`` scores, and ``(K + 1, N)``: is the rule's
        prediction right at each exit (a running ensemble predicts the ensemble's class), then the ``fallback``'s.
        A policy brings its own rule, temperatures and fallback."""
        if isinstance(rule, ExitPolicy):
            policy = rule
            rule, temperatures, fallback = policy.rule, policy.temperatures, policy.fallback
        rule = (rule or ExitRule()).check(self.num_exits)
        temps = list(temperatures) if temperatures is not None else [1.0] * self.num_exits
        scores, preds = rule_outputs(rule.module(temps), self.logits)
        outcome = self.outcome(fallback)
        return scores, torch.cat([preds == self.labels[None], outcome[-1:]])

    def accuracy(self) -> torch.Tensor:
        """(K + 1,) accuracy of each exit and of the ensemble."""
        return self.correct().float().mean(1)


@torch.no_grad()
def collect_outputs(net: MultiExitNetwork, batches: Iterable, device: torch.device | str = "cpu",
                    progress: str | None = None) -> ExitCache:
    """Run the whole network once over ``batches`` of ``(x, y)`` in eval mode; ``progress``: a label to show a
    progress bar under (``None``: silent)."""
    logits, labels = [], []
    if progress is not None:
        batches = track(batches, description=progress, transient=True)
    with eval_mode(net):
        for x, y in batches:
            logits.append(torch.stack(net(x.to(device)).logits).float().cpu())
            labels.append(y.cpu())
    return ExitCache(torch.cat(logits, dim=1), torch.cat(labels))
