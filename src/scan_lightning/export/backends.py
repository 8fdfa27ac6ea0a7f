"""Choosing the backend of the deployment form: eager PyTorch (optionally compiled) or onnxruntime."""
from __future__ import annotations

from scan_lightning.cost.macs import CostTable
from scan_lightning.export.ort_backend import OrtNetwork
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions


def deploy(net: MultiExitNetwork, options: DeployOptions | None = None, costs: CostTable | None = None
           ) -> DeployedNetwork | OrtNetwork:
    """``net`` in deployment form (default: BN folded, attention gated in place, patchify convs as GEMMs,
    channels-last, freed memory retained - process-wide, on CPU - and not compiled).

    With ``options.onnxruntime`` the parts run on onnxruntime (an ``OrtNetwork``; ``costs`` gives the input
    shape to export with); otherwise a :class:`DeployedNetwork`.
    """
    options = options or DeployOptions()
    if not options.onnxruntime:
        return DeployedNetwork(net, options)
    if costs is None:
        raise ValueError("deploying on onnxruntime needs the cost table (its input shape) to export the parts")
    return OrtNetwork(DeployedNetwork(net, options), costs)
