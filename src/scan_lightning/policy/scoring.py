"""Exit policies scored on cached outputs: what the real early-exit predictor would give, in honest MACs and,
with a latency table, in measured milliseconds; exit branches a policy skips are not charged."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable
from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.exit_policy import ExitPolicy, choose_exits, skipped_heads
from scan_lightning.policy.rules import ExitRule, rule_outputs


@dataclass
class DynamicResult:
    """Threshold-controlled inference on a cached dataset."""

    accuracy: float
    mean_macs: float
    exit_fractions: list[float]   # K exits, then the fallback (no exit claimed the sample)
    mean_ms: float | None = None  # with a latency table: predicted ms per image

    def to_dict(self) -> dict:
        """JSON layout (``mean_ms`` only when measured)."""
        out = {"accuracy": self.accuracy, "mean_macs": self.mean_macs, "exit_fractions": self.exit_fractions}
        return out if self.mean_ms is None else {**out, "mean_ms": self.mean_ms}


def cached_early_exit(cache: ExitCache, policy: ExitPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, what :class:`EarlyExitRunner` would answer under ``policy``, from cached logits: ``(prediction,
    exit_index)``, each ``(N,)`` (exit ``K``: the fallback)."""
    policy.for_exits(cache.num_exits)
    scores, preds = rule_outputs(policy.scorer(), cache.logits)
    chosen = choose_exits(scores, torch.as_tensor(policy.thresholds, dtype=torch.float32))
    fallback = cache.logits.mean(0) if policy.fallback == "ensemble" else cache.logits[-1]
    answers = torch.cat([preds, fallback.argmax(-1)[None]])
    return answers.gather(0, chosen[None])[0], chosen


def evaluate_thresholds(cache: ExitCache, policy: ExitPolicy, exit_macs: torch.Tensor,
                        exit_ms: torch.Tensor | None = None) -> DynamicResult:
    """What :class:`EarlyExitRunner` would give under ``policy``, from cached logits. ``exit_macs`` (and
    ``exit_ms``, a latency table's per-image time): (K + 1,) costs of leaving at each exit, then the fallback."""
    policy.for_exits(cache.num_exits)
    scores, outcome = cache.decisions(policy)
    chosen = choose_exits(scores, torch.as_tensor(policy.thresholds, dtype=torch.float32))
    correct = outcome.gather(0, chosen[None])[0]
    fractions = torch.bincount(chosen, minlength=cache.num_exits + 1).float() / chosen.numel()
    ms = None if exit_ms is None else exit_ms[chosen].double().mean().item()
    return DynamicResult(correct.float().mean().item(), exit_macs[chosen].double().mean().item(), fractions.tolist(), ms)


S = TypeVar("S", bound="Score")


@dataclass(frozen=True)
class Score:
    """A policy on one split: accuracy, mean honest MACs, exit mix (K exits, then the fallback), speed-ups over the
    plain network and over running every exit; with a latency table, predicted ms per image and its speed-up."""

    accuracy: float
    mean_macs: float
    exit_fractions: list[float]
    speedup_plain: float
    speedup_deepest: float
    mean_ms: float | None = None
    latency_speedup_plain: float | None = None

    def to_fields(self) -> dict[str, Any]:
        """The fields as keyword arguments (to extend a score)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Score)}

    def to_dict(self) -> dict[str, Any]:
        """JSON layout (latency fields only when measured)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """From the JSON layout (keys of other fields beside it are ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class Scorer:
    """Scores exit policies on cached outputs in both cost units: honest MACs and, with a latency table,
    measured ms per image; speed-ups against the plain network in each. Exit branches a policy skips
    (:func:`skipped_heads`) are not charged."""

    def __init__(self, costs: CostTable, latency: LatencyTable | None = None) -> None:
        self.costs, self.latency = costs, latency

    def __call__(self, cache: ExitCache, policy: ExitPolicy) -> Score:
        """``policy`` on ``cache``, in both cost units."""
        skipped = torch.tensor(policy.skipped_heads(self.costs.chained))
        exit_ms = self.latency.exit_times(skipped) if self.latency is not None else None
        res = evaluate_thresholds(cache, policy, self.costs.exit_macs(skipped), exit_ms)
        latency_speedup = (self.latency.plain_ms / res.mean_ms
                           if self.latency is not None and res.mean_ms is not None else None)
        return Score(res.accuracy, res.mean_macs, res.exit_fractions, self.costs.plain_macs / res.mean_macs,
                     self.costs.ensemble_macs / res.mean_macs, res.mean_ms, latency_speedup)

    def cost_model(self, cost: str, fallback: str, rule: ExitRule | None = None
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
        """In ``cost`` units (``macs`` or ``latency``): the exit costs of each threshold vector ((P, K) ->
        (P, K + 1), skipped exit branches not charged; none under a ``rule`` that reads earlier exits) and the plain
        network's cost."""
        table: Callable[[torch.Tensor], torch.Tensor] = self.costs.exit_macs
        reference = float(self.costs.plain_macs)
        if cost == "latency":
            if self.latency is None:
                raise ValueError("search.cost=latency needs a latency table (measured in the deployment form)")
            table, reference = self.latency.exit_times, self.latency.plain_ms
        chained = self.costs.chained or (rule is not None and rule.reads_history)
        return (lambda thresholds: table(skipped_heads(thresholds.double(), fallback, chained))), reference
