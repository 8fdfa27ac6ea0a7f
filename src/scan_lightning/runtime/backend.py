"""The protocol every backend of the deployment form offers (eager PyTorch, torch.compile, onnxruntime), and the two
walks built on it once for all of them: the plain network and every exit.

A new runtime implements ``prepare``, ``section``, ``exit`` and ``deep``; the early-exit predictor, the timings and
the latency table then drive it unchanged.
"""
from __future__ import annotations

from typing import Protocol

import torch

from scan_lightning.models.multi_exit import SectionOutput, plain_runs_every_exit


class Backend(Protocol):
    """Sections and exits of a multi-exit network in one deployment form."""

    num_exits: int
    num_classes: int
    isc: str | None

    @property
    def device(self) -> torch.device:
        """Where its inputs must be."""
        ...

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input in this form's layout."""
        ...

    def section(self, i: int, h: SectionOutput) -> SectionOutput:
        """Section ``i`` on the previous section's output."""
        ...

    def exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None) -> torch.Tensor:
        """Exit ``i``'s logits (``previous``: exit ``i - 1``'s, for ISC)."""
        ...

    def deep(self, h: SectionOutput) -> torch.Tensor:
        """The plain network's head on the last section's output (no ISC input)."""
        ...


@torch.inference_mode()
def run_all_exits(net: Backend, x: torch.Tensor) -> list[torch.Tensor]:
    """Every exit's logits for every sample (what the network computes without early exit)."""
    h: SectionOutput = net.prepare(x)
    logits: torch.Tensor | None = None
    out: list[torch.Tensor] = []
    for i in range(net.num_exits):
        h = net.section(i, h)
        logits = net.exit(i, h, logits)
        out.append(logits)
    return out


@torch.inference_mode()
def run_plain(net: Backend, x: torch.Tensor) -> torch.Tensor:
    """The plain network: every section, then the deep head alone (:func:`plain_runs_every_exit`: every exit)."""
    if plain_runs_every_exit(net.isc):
        return run_all_exits(net, x)[-1]
    h: SectionOutput = net.prepare(x)
    for i in range(net.num_exits):
        h = net.section(i, h)
    return net.deep(h)
