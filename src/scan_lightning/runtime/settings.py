"""Typed settings of the wall-clock measurement (the ``timing`` config node), checked once where they are made;
``conf/timing/default.yaml`` is the one home of their defaults."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.utils.defaults import group_defaults, merged


@dataclass(frozen=True)
class TimingSettings:
    """Whether to time, at which batch sizes, on how many test images, how many interleaved passes, the latency
    table's batch size and the deployment form both sides run in."""

    enabled: bool
    batch_sizes: tuple[int, ...]
    images: int
    repeats: int
    latency_batch_size: int
    deploy: DeployOptions

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"timing.batch_sizes={list(self.batch_sizes)} must be a non-empty list of sizes >= 1")
        for key in ("images", "repeats", "latency_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"timing.{key}={getattr(self, key)} must be >= 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | TimingSettings | None = None) -> TimingSettings:
        """From a ``timing`` node (a plain mapping); what it leaves out comes from ``conf/timing/default.yaml``."""
        if isinstance(cfg, TimingSettings):
            return cfg
        values = merged(group_defaults("timing"), cfg, "timing")
        sizes = values["batch_sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise ValueError(f"timing.batch_sizes={sizes!r} must be a non-empty list of sizes >= 1")
        return cls(bool(values["enabled"]), tuple(int(b) for b in sizes), int(values["images"]),
                   int(values["repeats"]), int(values["latency_batch_size"]), DeployOptions.from_config(values["deploy"]))
