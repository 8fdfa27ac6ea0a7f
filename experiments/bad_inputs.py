"""Every bad input we probe, run through the training entry point, with how each ends: exit status and message.

    python experiments/bad_inputs.py            # writes experiments/results/bad_inputs.md

Each case composes ``train.yaml`` with its overrides (on synthetic data, one fast_dev_run step if a case were
accepted) and goes through the same path as ``python -m scan_lightning.train``: Hydra's composition (an override
it cannot compose is status 2), then ``run_entry_point`` (rejected input: one line, status 2). A case also fails
the probe if it wrote anything into its run directory.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from scan_lightning.cli.task import hydra_error_message, run_entry_point
from scan_lightning.cli.train import train
from scan_lightning.utils.defaults import config_dir

BASE = ["data=synthetic", "model.backbone.width=0.125", "model.bottleneck_width=8", "trainer.fast_dev_run=true",
        "logger=none", "timing.enabled=false"]


def files(tmp: Path) -> dict[str, Path]:
    """The bad files some cases point at."""
    paths = {name: tmp / name for name in ("random.ckpt", "foreign.ckpt", "bad.json", "short_idx")}
    paths["random.ckpt"].write_bytes(os.urandom(4096))
    torch.save({"weights": torch.zeros(3)}, paths["foreign.ckpt"])
    paths["bad.json"].write_text("{not json")
    raw = paths["short_idx"] / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 16)
    return paths


def cases(f: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(what is wrong, overrides)."""
    fashion = ["data=fashion_mnist", "data.source_dir=/nonexistent"]
    return [
        ("typo'd key", ["data.batchsize=3"]),
        ("unknown group option", ["model=resnet7"]),
        ("unknown data option", ["data=mnist_typo"]),
        ("unparsable override", ["seed=[1"]),
        ("exits unsorted", ["model.exit_after=[3,1]"]),
        ("exits repeated", ["model.exit_after=[2,2]"]),
        ("no exits", ["model.exit_after=[]"]),
        ("exit out of range", ["model.exit_after=[1,9]"]),
        ("exit 0", ["model.exit_after=[0,2]"]),
        ("class count unlike the data's", ["model.num_classes=7"]),
        ("one class", ["data.num_classes=1", "model.num_classes=1"]),
        ("unknown head", ["model.head=mlp"]),
        ("unknown stem", ["model.backbone.stem=huge"]),
        ("alpha above 1", ["loss.terms.kd.weight=1.5"]),
        ("temperature 0", ["loss.terms.kd.temperature=0"]),
        ("temperature negative", ["loss.terms.kd.temperature=-1"]),
        ("negative term weight", ["loss.terms.hint.weight=-1"]),
        ("unknown reduction", ["loss.terms.hint.reduction=max"]),
        ("unknown teacher", ["loss.terms.kd.teacher=middle"]),
        ("batch size not a number", ["data.batch_size=abc"]),
        ("batch size 0", ["data.batch_size=0"]),
        ("eval batch size negative", ["data.eval_batch_size=-4"]),
        ("val_size 0", ["data.val_size=0"]),
        ("val_size >= training set", ["data.val_size=100000"]),
        ("max_train_samples 0", ["data.max_train_samples=0"]),
        ("num_workers negative", ["data.num_workers=-1"]),
        ("image size 0", ["data.image_size=0"]),
        ("search fallback unknown", ["search.fallback=best"]),
        ("GA population 1", ["search.ga.population=1"]),
        ("GA baseline unknown", ["search.ga.baseline=fastest"]),
        ("search cost unknown", ["search.cost=joules"]),
        ("exit rule unknown", ["policy.rule=pabee"]),
        ("thresholds given to train", ["policy.thresholds=[0.9,0.9,0.9,0.9]"]),
        ("patience of another rule", ["policy.rule=entropy", "policy.params.patience=2"]),
        ("running-ensemble weight negative", ["policy.rule=running_ensemble",
                                              "+policy.params.weights=[[1.0],[0.5,-1.0]]"]),
        ("GA lower threshold 1", ["search.ga.low=1.0"]),
        ("guarantee drop 1", ["search.guarantee.drop=1.0"]),
        ("guarantee delta 0", ["search.guarantee.delta=0"]),
        ("guarantee p-value unknown", ["search.guarantee.p_value=chernoff"]),
        ("ckpt_path missing", ["ckpt_path=/nonexistent/last.ckpt"]),
        ("init_from random bytes", [f"init_from={f['random.ckpt']}"]),
        ("init_from foreign checkpoint", [f"init_from={f['foreign.ckpt']}"]),
        ("teacher missing", ["teacher=/nonexistent/teacher.ckpt"]),
        ("Fashion-MNIST missing", [*fashion, "paths.data_dir=/nonexistent"]),
        ("Fashion-MNIST IDX truncated", [*fashion, f"paths.data_dir={f['short_idx']}"]),
        ("trainable pattern matching nothing", ["trainable=[nothing.*]"]),
        ("optimizer lr negative", ["optim.optimizer.lr=-0.1"]),
        ("max_epochs negative", ["trainer.max_epochs=-5", "trainer.fast_dev_run=false"]),
        ("precision unknown", ["trainer.precision=8-mixed"]),
        ("accelerator unknown", ["trainer.accelerator=tpu9"]),
        ("isc unknown", ["model.isc=sum"]),
        ("width 0", ["model.backbone.width=0"]),
        ("timing batch sizes empty", ["timing.enabled=true", "timing.batch_sizes=[]"]),
        ("monitor not logged", ["callbacks.model_checkpoint.monitor=val/acc/exit9"]),
        ("method unknown", ["method=boosting"]),
        ("SDN ramp maxima of the wrong count", ["method=sdn", "loss.terms.ce_ic.maxima=[0.5,0.5]"]),
        ("SDN ramp maximum above 1", ["method=sdn", "loss.terms.ce_ic.maxima=[0.5,0.5,1.5]"]),
        ("PABEE weights unknown", ["method=pbee", "loss.terms.ce.weights=deep"]),
        ("cascade with one shallow exit", ["method=ztw", "model.exit_after=[2]"]),
        ("BoostNet with a single exit", ["method=boost", "model.exit_after=[4]"]),
        ("L2W meta split empty", ["method=l2w", "callbacks.meta_reweighting.meta_size=0"]),
        ("L2W meta split larger than the training set", ["method=l2w",
                                                         "callbacks.meta_reweighting.meta_size=100000"]),
        ("L2W loss without its meta step", ["loss=l2w"]),
        ("L2W under DDP", ["method=l2w", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]),
    ]


def probe(name: str, overrides: list[str], root: Path) -> tuple[str, int, str, bool]:
    """(case, exit status, first line of the message, whether the run dir stayed empty)."""
    out = root / name.replace(" ", "_").replace("'", "")
    err = io.StringIO()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[*BASE, *overrides])
    except Exception as exc:   # what task.cli prints and exits 2 with
        return name, 2, hydra_error_message(exc).splitlines()[0].replace(str(root.parent), "<tmp>"), True
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            run_entry_point(train, cfg)
        except SystemExit as stop:
            code = int(stop.code)
        except Exception as exc:
            code, err = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
    message = (err.getvalue().strip().splitlines() or ["(accepted)"])[0].replace(str(root.parent), "<tmp>")
    return name, code, message, not out.exists() or not any(out.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bad_inputs.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = files(Path(tmp))
        rows = [probe(name, overrides, Path(tmp) / "runs") for name, overrides in cases(bad)]
    clean = sum(code == 2 and untouched for _, code, _, untouched in rows)
    lines = ["# Bad inputs and how each ends", "",
             f"Made by `python experiments/bad_inputs.py`: {len(rows)} cases, {clean} end with exit status 2, one "
             "message and an untouched run directory.", "",
             "| input | exit | message (first line) | run dir untouched |", "|---|---|---|---|"]
    for (name, code, message, untouched), (_, overrides) in zip(rows, cases(bad)):
        shown = " ".join(o for o in overrides if "/tmp" not in o) or name
        lines.append(f"| {name}: `{shown}` | {code} | {message.replace('|', '/')[:220]} | {'yes' if untouched else 'NO'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if clean == len(rows) else 1)


if __name__ == "__main__":
    main()
