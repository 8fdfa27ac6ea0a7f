"""Running a multi-exit network for real: deployment forms, the early-exit predictor, memory, wall clock."""
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions, as_deployed, fold_batchnorm
from scan_lightning.runtime.predictor import EarlyExitPredictor, EarlyExitResult, full_network
from scan_lightning.runtime.timing import Stopwatch, TimingResult, measure_latency, measure_wall_clock, time_early_exit

__all__ = [
    "DeployOptions", "DeployedNetwork", "EarlyExitPredictor", "EarlyExitResult", "Stopwatch", "TimingResult",
    "as_deployed", "fold_batchnorm", "full_network", "measure_latency", "measure_wall_clock", "time_early_exit",
]
