"""What running a multi-exit network costs: honest per-exit MACs (``torch.utils.flop_counter``) and latency tables."""
from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable, ExitCost, count_macs, count_params, exit_cost_vector, measure_costs

__all__ = ["CostTable", "ExitCost", "LatencyTable", "count_macs", "count_params", "exit_cost_vector", "measure_costs"]
