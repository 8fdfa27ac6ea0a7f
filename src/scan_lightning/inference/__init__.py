"""Cost model, early-exit predictor, cached outputs and threshold searches."""
from scan_lightning.inference.cache import DynamicResult, ExitCache, collect_outputs, evaluate_thresholds
from scan_lightning.inference.cost import CostTable, ExitCost, count_macs, measure_costs
from scan_lightning.inference.deploy import DeployedNetwork, DeployOptions, deploy
from scan_lightning.inference.export import build_torchscript, export_onnx, export_torchscript, load_torchscript
from scan_lightning.inference.latency import LatencyTable, measure_latency
from scan_lightning.inference.policy import ExitPolicy
from scan_lightning.inference.predictor import (
    EarlyExitPredictor,
    EarlyExitResult,
    check_thresholds,
    choose_exits,
    exit_confidence,
    full_network,
)
from scan_lightning.inference.search import (
    GAResult,
    budget_proportions,
    budget_sweep,
    budgeted_thresholds,
    decode_genes,
    genetic_search,
)
from scan_lightning.inference.timing import TimingResult, time_early_exit

__all__ = [
    "DeployOptions", "DeployedNetwork", "LatencyTable", "build_torchscript", "deploy", "export_onnx",
    "export_torchscript", "load_torchscript", "measure_latency",
    "CostTable", "DynamicResult", "EarlyExitPredictor", "EarlyExitResult", "ExitCache", "ExitCost", "ExitPolicy", "GAResult",
    "TimingResult", "budget_proportions", "budget_sweep", "budgeted_thresholds", "check_thresholds",
    "choose_exits", "collect_outputs", "count_macs", "decode_genes", "evaluate_thresholds", "exit_confidence",
    "full_network",
    "genetic_search", "measure_costs", "time_early_exit",
]
