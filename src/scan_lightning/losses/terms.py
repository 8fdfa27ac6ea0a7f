"""Loss terms over multi-exit outputs. Each term returns one scalar summed over the exits it covers.

Exit selections: ``"all"``, ``"shallow"`` (every exit but the deepest), ``"deepest"``, or a list of
0-based exit indices.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scan_lightning.models.outputs import ExitOutputs

ExitSelection = str | Sequence[int]
SELECTIONS = ("all", "shallow", "deepest")
TEACHERS = ("deepest", "ensemble")
OFA_TEACHERS = ("deepest", "frozen")
HINT_REDUCTIONS = ("mean", "sum")


def select_exits(exits: ExitSelection, num_exits: int) -> list[int]:
    """The 0-based exit indices a selection (``all``, ``shallow``, ``deepest`` or a list of indices) names among
    ``num_exits`` exits; ValueError for an unknown name or an index out of range."""
    if isinstance(exits, str):
        if exits == "all":
            return list(range(num_exits))
        if exits == "shallow":
            return list(range(num_exits - 1))
        if exits == "deepest":
            return [num_exits - 1]
        raise ValueError(f"exits={exits!r} is not a selection; use one of {SELECTIONS} or a list of indices")
    picked = [int(i) for i in exits]
    bad = [i for i in picked if not 0 <= i < num_exits]
    if bad:
        raise ValueError(f"exit indices {bad} do not exist; the network has exits 0..{num_exits - 1}")
    return picked


def _check_selection(exits: ExitSelection) -> ExitSelection:
    if isinstance(exits, str) and exits not in SELECTIONS:
        raise ValueError(f"exits={exits!r} is not a selection; use one of {SELECTIONS} or a list of indices")
    return exits if isinstance(exits, str) else [int(i) for i in exits]


class LossTerm(nn.Module):
    """A named, weighted loss term; ``weight`` is read by the composer."""

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "all") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"loss term weight={weight} must be >= 0")
        self.weight = float(weight)
        self.exits = _check_selection(exits)

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """Raise ValueError if this term cannot work on a network with these exits (before training)."""
        select_exits(self.exits, num_exits)

    def set_progress(self, fraction: float) -> None:
        """Where training stands, 0 at the first epoch and 1 at the last; terms whose weights follow a schedule (SDN's
        ramp) read it, the rest ignore it."""

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The sum of :meth:`exit_loss` over the selected exits. ``teacher``: a frozen network's deepest logits for the
        same batch, when training has one."""
        idx = select_exits(self.exits, len(outputs.logits))
        return torch.stack([self.exit_loss(outputs, target, i, teacher) for i in idx]).sum()

    def exit_loss(self, outputs: ExitOutputs, target: torch.Tensor, i: int, teacher: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """The term's loss at exit ``i``; subclasses implement it, and :meth:`forward` sums it over the selected
        exits."""
        raise NotImplementedError


class CrossEntropy(LossTerm):
    """Cross-entropy of each selected exit against the labels."""

    def exit_loss(self, outputs: ExitOutputs, target: torch.Tensor, i: int, teacher: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Cross-entropy of exit ``i``'s logits against ``target``."""
        return F.cross_entropy(outputs.logits[i], target)


def _exit_weights(values: Sequence[float], name: str) -> list[float]:
    weights = [float(v) for v in values]
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"{name}={list(values)} must be a non-empty list of numbers in [0, 1]")
    return weights


class RampedCrossEntropy(LossTerm):
    """SDN's internal-classifier loss (Kaya et al., ICML 2019, Sec. 4.2): the sum over the selected exits of
    ``w_i(t) * CE_i``, each weight growing linearly over training from ``start`` (0.01) to its maximum ``tau_i``.

    ``maxima``: one ``tau_i`` in [0, 1] per selected exit; ``None`` = SDN's rule, ``tau_i`` proportional to the exit's
    position, ``0.9 * i / n`` for the i-th of n (0.15, 0.3, ... 0.9 for SDN's six ICs). ``t`` is the epoch over the
    last epoch (:meth:`set_progress`), so the last epoch trains at ``tau_i``; the authors' code instead adds
    ``epoch * tau_i / epochs`` to 0.01 and clips at ``tau_i``. The deepest exit's own CE is a separate term.
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "shallow", maxima: Sequence[float] | None = None,
                 start: float = 0.01) -> None:
        super().__init__(weight, exits)
        self.maxima = None if maxima is None else _exit_weights(maxima, "maxima")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"start={start} must lie in [0, 1]")
        self.start = float(start)
        self.progress = 0.0

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """ValueError unless ``maxima`` has one entry per selected exit."""
        n = len(select_exits(self.exits, num_exits))
        if self.maxima is not None and len(self.maxima) != n:
            raise ValueError(f"maxima has {len(self.maxima)} entries but the term covers {n} exits "
                             f"(exits={self.exits!r}); give one tau in [0, 1] per exit, or null for SDN's rule")

    def set_progress(self, fraction: float) -> None:
        """Move the ramp to ``fraction`` of training (clipped to [0, 1])."""
        self.progress = min(1.0, max(0.0, float(fraction)))

    def exit_weights(self, n: int) -> list[float]:
        """The current weight of each of the ``n`` selected exits."""
        maxima = self.maxima or [0.9 * (j + 1) / n for j in range(n)]
        return [self.start + (tau - self.start) * self.progress for tau in maxima]

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``sum_i w_i(t) * CE_i`` over the selected exits."""
        idx = select_exits(self.exits, len(outputs.logits))
        weights = self.exit_weights(len(idx))
        return torch.stack([w * F.cross_entropy(outputs.logits[i], target) for w, i in zip(weights, idx)]).sum()


class WeightedCrossEntropy(LossTerm):
    """Cross-entropy at the selected exits as a weighted mean: ``sum_i a_i CE_i / sum_i a_i``.

    ``weights="depth"``: ``a_i`` is the exit's 1-based position, PABEE's training loss (Zhou et al., NeurIPS 2020,
    Eq. 6: deeper exits weigh more); or one non-negative number per selected exit.
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "all",
                 weights: str | Sequence[float] = "depth") -> None:
        super().__init__(weight, exits)
        if isinstance(weights, str):
            if weights != "depth":
                raise ValueError(f"weights={weights!r} is not allowed; use 'depth' or one number >= 0 per exit")
            self.weights: str | list[float] = weights
        else:
            self.weights = [float(w) for w in weights]
            if any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
                raise ValueError(f"weights={list(weights)} must be numbers >= 0 with a positive sum")

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """ValueError unless an explicit weight list has one entry per selected exit."""
        n = len(select_exits(self.exits, num_exits))
        if isinstance(self.weights, list) and len(self.weights) != n:
            raise ValueError(f"weights has {len(self.weights)} entries but the term covers {n} exits")

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The weighted mean of the selected exits' cross-entropies."""
        idx = select_exits(self.exits, len(outputs.logits))
        a = [float(i + 1) for i in idx] if isinstance(self.weights, str) else self.weights   # "depth" or a list
        return torch.stack([w * F.cross_entropy(outputs.logits[i], target) for w, i in zip(a, idx)]).sum() / sum(a)


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, mean over the batch, times T^2 (Hinton)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


class Distillation(LossTerm):
    """Self-distillation: each selected exit learns the softened output of a detached teacher.

    ``teacher="deepest"`` (SCAN) uses the deepest exit, ``"ensemble"`` the mean of all exits' logits.
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "shallow", temperature: float = 3.0,
                 teacher: str = "deepest") -> None:
        super().__init__(weight, exits)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if teacher not in TEACHERS:
            raise ValueError(f"teacher={teacher!r} is not allowed; choose one of {TEACHERS}")
        self.temperature = float(temperature)
        self.teacher = teacher

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> torch.Tensor:
        """SCAN's self-distillation (Zhang et al., NeurIPS 2019): the sum over the selected exits of the T^2-scaled KL
        from the detached teacher (deepest exit or ensemble); the ``teacher`` argument is not used."""
        teacher = (outputs.logits[-1] if self.teacher == "deepest" else outputs.ensemble).detach()
        idx = select_exits(self.exits, len(outputs.logits))
        return torch.stack([kd_kl(outputs.logits[i], teacher, self.temperature) for i in idx]).sum()


class FeatureHint(LossTerm):
    """Squared L2 distance between each selected exit's pooled feature and the deepest one (detached).

    ``reduction="mean"``: mean over the batch of the per-sample squared distance (independent of batch
    size). ``reduction="sum"``: summed over batch and feature dims, as the SCAN public code does - its
    weight 5e-7 assumes batch 128, i.e. equals weight 6.4e-5 with ``"mean"``.
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "shallow", reduction: str = "mean") -> None:
        super().__init__(weight, exits)
        if reduction not in HINT_REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not allowed; choose one of {HINT_REDUCTIONS}")
        self.reduction = reduction

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """ValueError unless every selected exit's pooled feature is as wide as the deepest exit's, which the hint
        compares it with."""
        for i in select_exits(self.exits, num_exits):
            if feature_widths[i] != feature_widths[-1]:
                raise ValueError(f"the feature hint needs equal feature widths; exit {i} has {feature_widths[i]}, "
                                 f"the deepest {feature_widths[-1]} (use bottleneck heads, or drop the hint term)")

    def exit_loss(self, outputs: ExitOutputs, target: torch.Tensor, i: int, teacher: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """SCAN's feature hint (Zhang et al., NeurIPS 2019) at exit ``i``: squared L2 distance of its pooled feature to
        the detached deepest one, summed or averaged over the batch (``reduction``)."""
        f_i, f_deep = outputs.features[i], outputs.features[-1].detach()
        sq = (f_i - f_deep).pow(2).sum()
        return sq / f_i.shape[0] if self.reduction == "mean" else sq


class OneForAll(LossTerm):
    """IMTA's One-for-all KD (Eq. 7-8): alpha * CE_i + (1 - alpha) * KL(p_teacher || p_i) at temperature T.

    ``teacher="deepest"`` (paper): the deepest exit of the same network, detached; ``"frozen"`` (public
    code): the deepest exit of a frozen network (the training module's ``teacher``, e.g. phase I's).
    The KL is averaged over the batch ('batchmean'; the public code's 'mean' also divides by the class
    count) and, as in the paper, not multiplied by T^2. ``alpha=1`` is plain cross-entropy.
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "shallow", alpha: float = 0.5,
                 temperature: float = 1.0, teacher: str = "deepest") -> None:
        super().__init__(weight, exits)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must lie in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if teacher not in OFA_TEACHERS:
            raise ValueError(f"teacher={teacher!r} is not allowed; choose one of {OFA_TEACHERS}")
        self.alpha, self.temperature, self.teacher = float(alpha), float(temperature), teacher

    def exit_loss(self, outputs: ExitOutputs, target: torch.Tensor, i: int, teacher: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """IMTA's one-for-all KD (Li et al., ICCV 2019, Eq. 7-8) at exit ``i``: alpha times its cross-entropy plus (1 -
        alpha) times the KL from the detached teacher at temperature T, without the T^2 factor."""
        t = self.temperature
        if self.teacher == "frozen":
            if teacher is None:
                raise ValueError("OneForAll(teacher='frozen') needs a frozen teacher network (config key: teacher)")
            teacher = teacher.detach()
        else:
            teacher = outputs.logits[-1].detach()
        kl = kd_kl(outputs.logits[i], teacher, t) / (t * t)   # the paper's OFA has no T^2 factor
        return self.alpha * F.cross_entropy(outputs.logits[i], target) + (1 - self.alpha) * kl
