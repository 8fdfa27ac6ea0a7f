"""Exit policies and everything decided on cached outputs: the exit rule, scoring, threshold searches, certified
thresholds, calibration."""
from scan_lightning.policy.cache import ExitCache, collect_outputs
from scan_lightning.policy.calibration import CalibrationResult, calibrate, calibration_errors, fit_temperatures
from scan_lightning.policy.exit_policy import (
    FALLBACKS,
    ExitPolicy,
    check_thresholds,
    choose_exits,
    exit_confidence,
    model_identity,
    resolve_policy,
    skipped_heads,
)
from scan_lightning.policy.guarantee import (
    Certified,
    Coverage,
    candidate_thresholds,
    certify,
    coverage,
    minimum_samples,
)
from scan_lightning.policy.scoring import DynamicResult, Scorer, evaluate_thresholds
from scan_lightning.policy.search import (
    GAResult,
    budget_proportions,
    budget_sweep,
    budgeted_thresholds,
    decode_genes,
    genetic_search,
)

__all__ = [
    "FALLBACKS", "CalibrationResult", "Certified", "Coverage", "DynamicResult", "ExitCache", "ExitPolicy", "GAResult", "Scorer",
    "budget_proportions", "budget_sweep", "budgeted_thresholds", "calibrate", "calibration_errors",
    "candidate_thresholds", "certify", "check_thresholds", "choose_exits", "collect_outputs", "coverage", "decode_genes", "evaluate_thresholds", "exit_confidence", "fit_temperatures",
    "genetic_search", "minimum_samples", "model_identity", "resolve_policy", "skipped_heads",
]
