"""Choosing the backend of the deployment form: eager PyTorch (optionally compiled), onnxruntime or OpenVINO."""
from __future__ import annotations

from scan_lightning.cost.macs import CostTable
from scan_lightning.export.ort_backend import OrtNetwork
from scan_lightning.export.ov_backend import OvNetwork  # imports OpenVINO itself only when one is made
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions


def deploy(net: MultiExitNetwork, options: DeployOptions | None = None, costs: CostTable | None = None
           ) -> DeployedNetwork | OrtNetwork | OvNetwork:
    """``net`` in deployment form (default: BN folded, attention gated in place, patchify convs as GEMMs,
    channels-last, freed memory retained - process-wide, on CPU - and not compiled).

    With ``options.onnxruntime`` the parts run on onnxruntime (an ``OrtNetwork``), with ``options.openvino`` on
    OpenVINO's CPU plugin (an ``OvNetwork``); ``costs`` gives the input shape to export with. Otherwise a
    :class:`DeployedNetwork`.
    """
    options = options or DeployOptions()
    if not (options.onnxruntime or options.openvino):
        return DeployedNetwork(net, options)
    runtime = "onnxruntime" if options.onnxruntime else "openvino"
    if costs is None:
        raise ValueError(f"deploying on {runtime} needs the cost table (its input shape) to export the parts")
    if options.openvino:
        return OvNetwork(DeployedNetwork(net, options), costs)
    return OrtNetwork(DeployedNetwork(net, options), costs)
