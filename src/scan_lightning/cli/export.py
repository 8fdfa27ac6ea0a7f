"""Export a checkpoint for deployment: ``python -m scan_lightning.export ckpt_path=... format=torchscript|onnx`` (Hydra).

The network in deployment form (``form``: ``deploy(net)`` by default, or BN folded only), its exit policy
(``thresholds.json`` beside the checkpoint, ``policy.thresholds_path`` or given ``policy.thresholds``) and its cost table
go into one TorchScript file whose forward really exits early, or into an ONNX directory (one graph per section and per exit, ``manifest.json``) that
``scan_lightning.export.onnx_runner.OnnxEarlyExit`` runs on onnxruntime. Neither needs the project's
config to run.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from scan_lightning.cli.task import cli as run_cli
from scan_lightning.cli.task import run_entry_point, task_wrapper
from scan_lightning.data.base import input_shape
from scan_lightning.policy.exit_policy import check_policy_spec
from scan_lightning.utils.config import to_plain
from scan_lightning.utils.defaults import config_dir
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)

FORMATS = ("torchscript", "onnx")
FORMS = ("deploy", "fold_batchnorm", "none")
CHECK_BATCH = 16


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def check_export_config(cfg: DictConfig) -> None:
    """Everything that can be checked before the checkpoint is read: one clear error each."""
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not allowed; choose one of {FORMATS}")
    form = cfg.get("form", "deploy")
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not allowed; choose one of {FORMS}")
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt} does not exist")
    if fmt == "onnx":
        from scan_lightning.export.formats import ONNX_EXPORTERS

        exporter = cfg.get("onnx_exporter", "dynamo")
        if exporter not in ONNX_EXPORTERS:
            raise ValueError(f"onnx_exporter={exporter!r} is not allowed; choose one of {ONNX_EXPORTERS}")
        missing = _missing("onnx", *(["onnxscript"] if exporter == "dynamo" else []))
        if missing:
            raise ValueError(f"format=onnx needs {', '.join(missing)}: pip install 'scan_lightning[deploy]'")
    check_policy_spec(to_plain(cfg.policy))


def _default_output(ckpt: Path, fmt: str) -> Path:
    return ckpt.with_suffix(".pt") if fmt == "torchscript" else ckpt.parent / f"{ckpt.stem}_onnx"


def _check(fmt: str, output: Path, net, policy, costs) -> dict[str, Any]:
    """Load the artefact as a user would and compare it with the eager predictor on random images."""
    import torch

    from scan_lightning.runtime.early_exit import EarlyExitRunner

    x = torch.randn(CHECK_BATCH, *costs.input_shape, generator=torch.Generator().manual_seed(0))
    want = EarlyExitRunner(net, policy, costs)(x)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch 2.9+: "torch.jit.load is deprecated"
            model = torch.jit.load(str(output))
        prediction, exit_index, _, _ = model(x)
    else:
        if _missing("onnxruntime"):
            return {"skipped": "onnxruntime is not installed (pip install 'scan_lightning[deploy]')"}
        from scan_lightning.export.onnx_runner import OnnxEarlyExit

        got = OnnxEarlyExit(output)(x.numpy())
        prediction, exit_index = torch.from_numpy(got.prediction), torch.from_numpy(got.exit_index)
    same = (prediction == want.prediction) & (exit_index == want.exit_index)
    return {"samples": CHECK_BATCH, "agree": int(same.sum())}


@task_wrapper
def export(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.ckpt_path`` (weights_only), fold BatchNorm, write the artefact; returns what was written."""
    check_export_config(cfg)
    from scan_lightning.cost.macs import measure_costs
    from scan_lightning.export.formats import export_onnx, export_torchscript
    from scan_lightning.policy.exit_policy import model_identity, resolve_policy
    from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions, fold_batchnorm
    from scan_lightning.training.module import load_module

    ckpt = Path(cfg.ckpt_path)
    module = load_module(ckpt)
    net = module.net.eval()
    data = module.hparams.run_config["data"]
    shape = input_shape(data)
    policy = resolve_policy(net.num_exits, ckpt, to_plain(cfg.policy),
                            model=model_identity(net, shape))
    costs = measure_costs(net, shape)
    form = cfg.get("form", "deploy")
    exported = (DeployedNetwork(net, DeployOptions(compile=False, onnxruntime=False)) if form == "deploy"
                else fold_batchnorm(net) if form == "fold_batchnorm" else net)
    fmt = cfg.format
    output = Path(cfg.output) if cfg.get("output") else _default_output(ckpt, fmt)
    if fmt == "torchscript":
        export_torchscript(exported, policy, costs, output, freeze=bool(cfg.get("freeze", True)),
                           class_names=data.get("class_names"))
    else:
        export_onnx(exported, policy, costs, output, exporter=cfg.get("onnx_exporter", "dynamo"),
                    class_names=data.get("class_names"))
    result: dict[str, Any] = {"format": fmt, "form": form, "output": str(output), "checkpoint": str(ckpt),
                              "num_exits": net.num_exits, "input_shape": list(shape), "policy": policy.to_dict()}
    log.info(f"wrote {output} ({fmt}, {form}; {net.num_exits} exits, input {'x'.join(map(str, shape))}, "
             f"rule {policy.rule.name}, thresholds {[round(t, 4) for t in policy.thresholds]}, fallback {policy.fallback})")
    if cfg.get("check", True):
        result["check"] = _check(fmt, output, exported, policy, costs)
        check = result["check"]
        if "skipped" in check:
            log.info(f"check skipped: {check['skipped']}")
        else:
            log.info(f"check: {check['agree']}/{check['samples']} random images take the same exit and answer as the "
                  f"eager early-exit predictor")
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    """The Hydra main of ``export``."""
    run_entry_point(export, cfg, prefix="error")


def cli() -> None:
    """The console command (``scan-export``, ``python -m scan_lightning.export``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
