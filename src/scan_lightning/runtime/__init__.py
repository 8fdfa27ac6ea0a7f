"""Running a multi-exit network for real: deployment forms, the early-exit predictor, memory, wall clock."""
from scan_lightning.runtime.early_exit import EarlyExitResult, EarlyExitRunner, plain_network
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions, as_deployed, fold_batchnorm
from scan_lightning.runtime.timing import Stopwatch, TimingResult, measure_latency, measure_wall_clock, time_early_exit

__all__ = [
    "DeployOptions", "DeployedNetwork", "EarlyExitRunner", "EarlyExitResult", "Stopwatch", "TimingResult",
    "as_deployed", "fold_batchnorm", "plain_network", "measure_latency", "measure_wall_clock", "time_early_exit",
]
