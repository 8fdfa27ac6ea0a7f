"""The one result type of the post-fit pipeline, used by every consumer (callback, ``evaluate``, reports, W&B,
``Predictor``); JSON only at the file boundary (``thresholds.json``, :meth:`PostFitResult.save` / :meth:`load`)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable
from scan_lightning.models.outputs import exit_name, exit_names
from scan_lightning.policy.exit_policy import ExitPolicy, read_json_object
from scan_lightning.policy.guarantee import Certified
from scan_lightning.policy.scoring import Score
from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.runtime.timing import TimingResult


@dataclass(frozen=True, kw_only=True)
class StageScore(Score):
    """The policy on one split, beside the deepest exit's and the ensemble's own accuracy there."""

    deepest_accuracy: float
    ensemble_accuracy: float


@dataclass(frozen=True)
class AnytimePoint:
    """One exit's own accuracy (or the ensemble's) against its cumulative MACs (and latency-table ms)."""

    exit: str
    macs: float
    accuracy: float
    ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON layout (``ms`` only when measured)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BudgetedPoint:
    """One point of MSDNet's budgeted sweep: thresholds from validation proportions ``p``, scored on test, with the
    validation figures an operating point is chosen by (never the test set)."""

    p: float
    thresholds: list[float]
    test: Score
    val_accuracy: float
    val_mean_macs: float
    val_mean_ms: float | None = None

    def val_cost(self, unit: str) -> float | None:
        """The validation mean cost per image in ``unit`` (``macs`` or ``ms``)."""
        return self.val_mean_macs if unit == "macs" else self.val_mean_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON layout: the test score's keys at the top, ``val_*`` beside them."""
        out = {"p": self.p, "thresholds": list(self.thresholds), **self.test.to_dict(),
               "val_accuracy": self.val_accuracy, "val_mean_macs": self.val_mean_macs}
        return out if self.val_mean_ms is None else {**out, "val_mean_ms": self.val_mean_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetedPoint:
        """From the JSON layout."""
        return cls(float(data["p"]), [float(t) for t in data["thresholds"]], Score.from_dict(data),
                   float(data["val_accuracy"]), float(data["val_mean_macs"]), data.get("val_mean_ms"))


@dataclass(frozen=True)
class SearchRecord:
    """How the policy was searched: the cost unit the GA minimised, its best fitness per generation, its settings."""

    cost: str
    fitness: float
    best_per_generation: list[float]
    settings: dict[str, Any]


@dataclass(frozen=True)
class CalibrationRecord:
    """Per-exit temperatures fitted on ``fitted_on`` validation images; ECE before and after on the other
    ``reported_on`` validation images and on test."""

    temperatures: list[float]
    ece_before: list[float]
    ece_after: list[float]
    n_bins: int
    fraction: float
    fitted_on: int
    reported_on: int
    ece_test_before: list[float]
    ece_test_after: list[float]


@dataclass(frozen=True)
class PostFitResult:
    """Everything the post-fit pipeline found for one network: its policy, costs, scores on validation and test,
    anytime and budgeted curves, how it was searched and calibrated, and the wall clock of the deployment form."""

    policy: ExitPolicy
    costs: CostTable
    val: StageScore
    test: StageScore
    anytime: list[AnytimePoint]
    budgeted: list[BudgetedPoint]
    model: dict[str, Any]
    latency: LatencyTable | None = None
    search: SearchRecord | None = None
    calibration: CalibrationRecord | None = None
    guarantee: Certified | None = None        # thresholds certified (search.guarantee) instead of searched by the GA
    deploy: DeployOptions | None = None
    wall_clock: list[TimingResult] = field(default_factory=list)

    @property
    def num_exits(self) -> int:
        """Exits of the network."""
        return self.policy.num_exits

    def metrics(self) -> dict[str, float]:
        """The scalars worth logging: ``test/dynamic/*``, ``val/dynamic/*``, temperatures, ``test/wall/*``."""
        t = self.test
        metrics = {f"test/dynamic/{k}": v for k, v in (
            ("accuracy", t.accuracy), ("mean_macs", t.mean_macs), ("speedup_plain", t.speedup_plain),
            ("speedup_deepest", t.speedup_deepest), ("mean_ms", t.mean_ms),
            ("latency_speedup_plain", t.latency_speedup_plain)) if v is not None}
        names = exit_names(self.num_exits, "fallback")
        metrics.update({f"test/dynamic/exit_frac/{n}": f for n, f in zip(names, t.exit_fractions)})
        metrics.update({"val/dynamic/accuracy": self.val.accuracy, "val/dynamic/mean_macs": self.val.mean_macs,
                        "val/dynamic/speedup_plain": self.val.speedup_plain})
        for i, temp in enumerate(self.policy.temperatures):
            metrics[f"val/calibration/temperature/{exit_name(i)}"] = temp
        if self.guarantee is not None:
            g = self.guarantee
            metrics.update({"val/guarantee/certified": float(g.certified), "val/guarantee/tau": g.tau,
                            "val/guarantee/drop": g.val_drop, "val/guarantee/early": g.val_early})
        for w in self.wall_clock:
            metrics[f"test/wall/speedup_batch{w.batch_size}"] = w.wall_speedup
            metrics[f"test/wall/early_exit_images_per_s_batch{w.batch_size}"] = w.early_exit.images_per_s
        return metrics

    # --- the file boundary: thresholds.json ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``thresholds.json`` layout (plain data)."""
        out: dict[str, Any] = {"num_exits": self.num_exits, **self.policy.to_dict(), "costs": self.costs.to_dict(),
                               "latency": self.latency.to_dict() if self.latency is not None else None,
                               "val": self.val.to_dict(), "test": self.test.to_dict(),
                               "anytime": [a.to_dict() for a in self.anytime],
                               "budgeted": [b.to_dict() for b in self.budgeted], "model": dict(self.model),
                               "calibration": dataclasses.asdict(self.calibration) if self.calibration else None}
        if self.search is not None:
            out["cost"] = self.search.cost
            out["ga"] = {"fitness": self.search.fitness, "best_per_generation": self.search.best_per_generation,
                         **self.search.settings}
        if self.guarantee is not None:
            out["guarantee"] = self.guarantee.to_dict()
        if self.deploy is not None:
            out["deploy"] = self.deploy.to_dict()
        if self.wall_clock:
            out["wall_clock"] = [w.to_dict() for w in self.wall_clock]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "the result") -> PostFitResult:
        """From the ``thresholds.json`` layout; one clear error naming ``source`` when it is not a full result."""
        missing = [k for k in ("thresholds", "costs", "val", "test", "anytime", "budgeted") if k not in data]
        if missing:
            raise ValueError(f"{source} is not a post-fit result (it has no {missing[0]!r}): rerun the search "
                             f"(python -m scan_lightning.evaluate ckpt_path=... policy.thresholds=search)")
        ga = data.get("ga")
        search = None
        if data.get("cost") is not None and ga is not None:
            settings = {k: v for k, v in ga.items() if k not in ("fitness", "best_per_generation")}
            search = SearchRecord(str(data["cost"]), float(ga["fitness"]), list(ga["best_per_generation"]), settings)
        return cls(
            policy=ExitPolicy.from_dict(data, source=source),
            costs=CostTable.from_dict(data["costs"]),
            val=StageScore.from_dict(data["val"]),
            test=StageScore.from_dict(data["test"]),
            anytime=[AnytimePoint(str(a["exit"]), float(a["macs"]), float(a["accuracy"]), a.get("ms"))
                     for a in data["anytime"]],
            budgeted=[BudgetedPoint.from_dict(b) for b in data["budgeted"]],
            model=dict(data.get("model") or {}),
            latency=LatencyTable.from_dict(data["latency"]) if data.get("latency") else None,
            search=search,
            calibration=CalibrationRecord(**data["calibration"]) if data.get("calibration") else None,
            guarantee=Certified(**data["guarantee"]) if data.get("guarantee") else None,
            deploy=DeployOptions.from_config(data["deploy"]) if data.get("deploy") else None,
            wall_clock=[TimingResult.from_dict(w) for w in data.get("wall_clock") or []],
        )

    def save(self, path: str | Path) -> Path:
        """Write ``thresholds.json`` (folders made as needed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PostFitResult:
        """Read a ``thresholds.json`` written by :meth:`save`."""
        path = Path(path)
        return cls.from_json(read_json_object(path, "a post-fit result (a JSON object)"), source=str(path))
