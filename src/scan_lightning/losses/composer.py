"""Combine named, weighted loss terms; return the total and every term's (unweighted) value."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from scan_lightning.losses.terms import LossTerm
from scan_lightning.models.outputs import ExitOutputs


class LossComposer(nn.Module):
    """``total = sum(term.weight * term(outputs, target))`` over the named terms."""

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty; declare at least one term")
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise TypeError(f"loss term {name!r} is a {type(term).__name__}, not a LossTerm")
        self.terms = nn.ModuleDict(dict(terms))

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """One clear error, naming the term, if a term does not fit the network's exits."""
        for name, term in self.terms.items():
            try:
                cast(LossTerm, term).check(num_exits, feature_widths)   # __init__ admits LossTerms only
            except ValueError as err:
                raise ValueError(f"loss term {name!r}: {err}") from None

    def set_progress(self, epoch: int, max_epochs: int | None) -> None:
        """Tell every term where training stands: ``epoch / (max_epochs - 1)`` (1 on a one-epoch run or without an
        epoch limit), read by scheduled terms such as SDN's ramp."""
        fraction = epoch / (max_epochs - 1) if max_epochs and max_epochs > 1 else 1.0
        for term in self.terms.values():
            cast(LossTerm, term).set_progress(fraction)

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and every term's unweighted value. ``teacher``: a frozen network's deepest logits for
        the batch (IMTA phase II), passed to every term beside the student's outputs, as torchdistill passes student
        and teacher outputs."""
        values = {name: term(outputs, target, teacher) for name, term in self.terms.items()}
        total = sum(self.terms[name].weight * v for name, v in values.items())
        return total, values

    def __str__(self) -> str:
        """The objective as a readable formula, e.g. ``1.0 * ce_deep + 0.5 * kd``."""
        return " + ".join(f"{t.weight:g} * {name}" for name, t in self.terms.items())
