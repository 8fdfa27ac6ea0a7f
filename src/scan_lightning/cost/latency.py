"""A latency table: the measured time of every section and exit of the deployment form, per image.

Measured once, on the machine and device that will serve the network, at one batch size; the threshold
search can then optimise time instead of MACs (``search.cost=latency``). A sample leaving at exit k is
charged sections 1..k and exits 1..k it ran, as in the MAC count; the fallback ran every section.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scan_lightning.cost.macs import exit_cost_vector


@dataclass(frozen=True)
class LatencyTable:
    """Measured per-image times of the deployment form's sections and exit branches at one batch size on one device: a
    cost model the threshold search can minimise (``search.cost=latency``)."""
    batch_size: int
    device: str
    section_ms: list[float]   # per image, median over repeats
    exit_ms_own: list[float]  # each exit's own time per image (attention, head, ISC, confidence)
    deep_head_ms: float       # the plain network's head (pool + Linear) per image
    plain_every_exit: bool = False   # the plain network runs every exit (linear ISC: no head stands alone)

    @property
    def cumulative_ms(self) -> torch.Tensor:
        """(K,) ms per image of leaving at each exit: every section and exit up to it."""
        return self.exit_times()[:-1]

    @property
    def exit_ms(self) -> torch.Tensor:
        """(K + 1,) cost of leaving at each exit, then of the fallback (ran everything)."""
        return self.exit_times()

    def exit_times(self, skipped: torch.Tensor | None = None) -> torch.Tensor:
        """(..., K + 1) ms per image of leaving at each exit, then at the fallback; ``skipped``: (..., K) exit
        branches not run."""
        return exit_cost_vector(torch.tensor(self.section_ms, dtype=torch.float64),
                                torch.tensor(self.exit_ms_own, dtype=torch.float64), skipped)

    @property
    def plain_ms(self) -> float:
        """The plain network: every section and the deep head alone (or every exit, ``plain_every_exit``)."""
        return sum(self.section_ms) + (sum(self.exit_ms_own) if self.plain_every_exit else self.deep_head_ms)

    def to_dict(self) -> dict:
        """Plain data for JSON: the measured fields plus the derived ``cumulative_ms`` and ``plain_ms``."""
        return {"batch_size": self.batch_size, "device": self.device, "section_ms": self.section_ms,
                "exit_ms_own": self.exit_ms_own, "deep_head_ms": self.deep_head_ms,
                "plain_every_exit": self.plain_every_exit,
                "cumulative_ms": self.cumulative_ms.tolist(), "plain_ms": self.plain_ms}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        """The table from :meth:`to_dict`'s output (the derived entries are recomputed, not read)."""
        return cls(int(data["batch_size"]), str(data["device"]), list(data["section_ms"]),
                   list(data["exit_ms_own"]), float(data["deep_head_ms"]), bool(data.get("plain_every_exit", False)))
