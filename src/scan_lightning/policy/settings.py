"""Typed settings of the post-fit threshold search, checked once where they are made.

``conf/search/default.yaml`` is the one home of the defaults: :meth:`SearchSettings.from_config` takes a (possibly
partial) ``search`` node, fills what it leaves out from that file, rejects unknown keys, and checks every value.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scan_lightning.policy.exit_policy import check_fallback
from scan_lightning.utils.defaults import group_defaults, merged

BASELINES = ("deepest", "ensemble")
COSTS = ("macs", "latency")


def is_run_dir(baseline: object) -> bool:
    """Does ``search.ga.baseline`` name a baseline run directory (a path, not a number), to be read before the
    search?"""
    if not isinstance(baseline, str) or baseline in BASELINES:
        return False
    try:
        float(baseline)
        return False
    except ValueError:
        return "/" in baseline or baseline.startswith(".")


@dataclass(frozen=True)
class GASettings:
    """SCAN Algorithm 2 (Zhang et al., NeurIPS 2019): genes, population, fitness weight ``beta``, ``baseline``."""

    bits: int
    population: int
    generations: int
    beta: float
    baseline: str | float      # deepest | ensemble | an accuracy in [0, 1] | a baseline run dir (resolved before use)
    crossover_rate: float
    mutation_rate: float
    elite: int
    seed: int
    low: float | None = None           # the lowest threshold the genes decode to; None: the rule's (SCAN: 0.7)
    baseline_from: str | None = None   # the baseline run whose accuracy ``baseline`` is, once it was read

    def __post_init__(self) -> None:
        baseline = self.baseline
        if isinstance(baseline, str) and baseline not in BASELINES and not is_run_dir(baseline):
            try:
                baseline = float(baseline)
            except ValueError:
                raise ValueError(f"search.ga.baseline={baseline!r} is not allowed; choose one of {BASELINES}, an "
                                 "accuracy in [0, 1] or a baseline run directory") from None
            object.__setattr__(self, "baseline", baseline)
        if not isinstance(baseline, str) and not 0.0 <= float(baseline) <= 1.0:
            raise ValueError(f"search.ga.baseline={baseline} must be an accuracy in [0, 1]")
        for name, ok in (("bits", self.bits >= 1), ("population", self.population >= 2),
                         ("generations", self.generations >= 1), ("elite", 0 <= self.elite < self.population),
                         ("beta", self.beta >= 0), ("crossover_rate", 0 <= self.crossover_rate <= 1),
                         ("mutation_rate", 0 <= self.mutation_rate <= 1),
                         ("low", self.low is None or 0 <= self.low < 1)):
            if not ok:
                raise ValueError(f"search.ga.{name}={getattr(self, name)} is out of range")

    @property
    def baseline_run(self) -> str | None:
        """The baseline run directory whose selected validation accuracy is the baseline, if one is named."""
        return self.baseline if isinstance(self.baseline, str) and is_run_dir(self.baseline) else None

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (saved with the search result)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibrationSettings:
    """Per-exit temperature scaling before the search: ``fraction`` of the validation split fits temperatures."""

    enabled: bool
    fraction: float
    n_bins: int

    def __post_init__(self) -> None:
        if self.enabled and not 0.0 < self.fraction < 1.0:
            raise ValueError(f"search.calibration.fraction={self.fraction} must lie strictly between 0 and 1")
        if self.n_bins < 1:
            raise ValueError(f"search.calibration.n_bins={self.n_bins} must be >= 1")


P_VALUES = ("binomial", "hoeffding_bentkus")


@dataclass(frozen=True)
class GuaranteeSettings:
    """Thresholds with a distribution-free guarantee (Learn-then-Test, Angelopoulos et al. 2021; the risk control of
    RC-EENN, Jazbec et al. 2024): with probability >= 1 - ``delta`` over the validation draw, the accuracy drop
    against the fallback (never exiting early) is at most ``drop`` (a fraction: 0.01 = 1 point). ``enabled``: the
    post-fit search certifies thresholds instead of running the GA. ``p_value``: binomial (exact) or
    hoeffding_bentkus; ``steps``: the fixed sequence of shared thresholds tested, from 1 (never exit) down."""

    enabled: bool
    drop: float
    delta: float
    p_value: str
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"search.guarantee.enabled={self.enabled!r} must be true or false")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"search.guarantee.drop={self.drop} must lie in [0, 1) (a fraction: 0.01 = 1 point)")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"search.guarantee.delta={self.delta} must lie in (0, 1)")
        if self.p_value not in P_VALUES:
            raise ValueError(f"search.guarantee.p_value={self.p_value!r} is not allowed; choose one of {P_VALUES}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"search.guarantee.steps={self.steps!r} must be an integer >= 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None) -> GuaranteeSettings:
        """From a ``search.guarantee`` node; what it leaves out comes from ``conf/search/default.yaml``."""
        values = merged(group_defaults("search")["guarantee"], cfg, "search.guarantee")
        try:
            drop, delta = float(values["drop"]), float(values["delta"])
        except (TypeError, ValueError):
            raise ValueError(f"search.guarantee.drop={values['drop']!r} and delta={values['delta']!r} must be "
                             f"numbers") from None
        return cls(values["enabled"], drop, delta, str(values["p_value"]), values["steps"])

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` config node: what the GA minimises (``cost``), its settings, the fallback, the budgeted
    sweep's steps and calibration."""

    cost: str
    ga: GASettings
    fallback: str             # ensemble | deepest | auto
    budget_steps: int
    calibration: CalibrationSettings
    guarantee: GuaranteeSettings

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"search.cost={self.cost!r} is not allowed; choose one of {COSTS}")
        if self.fallback != "auto":
            check_fallback(self.fallback)
        if self.budget_steps < 1:
            raise ValueError(f"search.budget_steps={self.budget_steps} must be >= 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | SearchSettings | None = None) -> SearchSettings:
        """From a ``search`` node (a plain mapping); what it leaves out comes from ``conf/search/default.yaml``."""
        if isinstance(cfg, SearchSettings):
            return cfg
        values = merged(group_defaults("search"), cfg, "search")
        try:
            ga = GASettings(**{k: _number(v, k) for k, v in values["ga"].items()})
            calibration = CalibrationSettings(**values["calibration"])
            guarantee = GuaranteeSettings.from_config(values["guarantee"])
            return cls(str(values["cost"]), ga, str(values["fallback"]), int(values["budget_steps"]), calibration,
                       guarantee)
        except TypeError as err:
            raise ValueError(f"search settings: {err}") from None

    def with_baseline(self, accuracy: float, run: str) -> SearchSettings:
        """These settings with the GA baseline given as the accuracy the caller read from baseline ``run``."""
        return dataclasses.replace(self, ga=dataclasses.replace(self.ga, baseline=float(accuracy), baseline_from=run))


def _number(value: Any, key: str) -> Any:
    """GA settings are numbers except the baseline; integers where the GA counts."""
    if key in ("baseline", "baseline_from") or (key == "low" and value is None):
        return value
    if key in ("bits", "population", "generations", "elite", "seed"):
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError(f"search.ga.{key}={value} must be an integer")
        return int(value)
    return float(value)
