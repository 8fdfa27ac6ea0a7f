"""Head-to-head: SCAN (this repo) against earlyon 0.3.0 on Fashion-MNIST, CIFAR-stem ResNet18 at 1x28x28.

Both methods get the same data, the same backbone and the same training budget:

- **data**: ONE seeded split made by our ``FashionMNISTDataModule`` (``data=fashion_mnist``, seed 0): 20,000
  training images (``data.max_train_samples``), the 5,000-image held-out validation split cut into a
  *threshold* split (first 2,500: LR choice, threshold search / earlyon's ``calibrate_thresholds``) and a
  *temperature* split (last 2,500: temperatures only), and the full 10,000-image test set (scored once,
  never used to choose anything). Eval transforms everywhere (``augment`` is off in ``data=fashion_mnist``),
  materialised once, so both models see identical tensors.
- **backbone**: full-width CIFAR-stem ResNet18 (3x3/1 stem, no max-pool, torchvision ``BasicBlock``,
  64-128-256-512), 1 input channel, exits after layer1, layer2, layer3 and the final classifier.
  Ours: ``model=resnet18 data=fashion_mnist loss=scan_code`` (attention + bottleneck heads, self-distillation),
  built and trained through our Hydra config, ``MultiExitModule`` and a Lightning ``Trainer``.
  earlyon: ``earlyon.models.custom_ee`` (its way to wrap any backbone; it ships no CIFAR ResNet18) on the same
  ResNet18 written as an ``nn.Sequential`` (so its staged deployment applies), its ``EarlyExitHead``s,
  trained by its ``joint_train_backbone_and_exits`` with its weighted multi-exit CE.
- **budget**: SGD (momentum 0.9, wd 5e-4), batch 128, cosine over ``--epochs`` epochs (stepped per epoch,
  as both trainers do), each epoch ``--batches-per-epoch`` batches drawn without replacement from the 20k
  split by the same seeded sampler. LR per method from ``--lrs`` on short runs (``--grid-batches-per-epoch``),
  chosen by the final exit's accuracy on the threshold split.
- **operating points** (accuracy drop 0 and 1 point): chosen on validation only. earlyon: its own
  ``calibrate_thresholds(target_accuracy_drop=d)`` on the threshold split, with its per-head temperature
  scaling fitted on the temperature split. Ours: GA (several beta, both fallbacks) and budgeted-search
  threshold candidates scored on the threshold split; the cheapest (mean honest MACs) whose drop from our
  final exit is at most d at 90 % one-sided confidence (paired bound, :func:`pick_operating_point`). Temperatures: :func:`scan_temperatures` (the hook; 1.0 until
  ``scan_lightning.policy.calibration.fit_temperatures`` exists).
- **MACs**: ``torch.utils.flop_counter`` (conv + matmul MACs) for both. A sample leaving at exit k paid every
  section and every exit branch it ran up to k (ours: ``measure_costs``; earlyon: backbone prefix + every
  *enabled* head up to k, since its hooks run only enabled heads). Fractions are of the plain ResNet18
  (backbone + final classifier, identical for both). earlyon's own fvcore estimate is kept alongside.
- **timing**: images/s at batch 256 and p50/p95 latency at batch 1 on the same test images, methods
  interleaved pass by pass, median of several passes. Ours: :func:`time_scan` (the one function to edit
  when our deployment form changes). earlyon: ``forward_inference_batched`` at 256; at batch 1 the eager
  wrapper and its ``StagedModel``, the faster one reported.

    python experiments/bench/earlyon_head_to_head.py                    # train (resumable), then evaluate
    python experiments/bench/earlyon_head_to_head.py --stage train      # LR grid + final runs -> outputs/earlyon_bench/
    python experiments/bench/earlyon_head_to_head.py --stage evaluate   # calibrate, search, score, time, write results

Writes ``experiments/bench/results/earlyon_head_to_head.{json,md}``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "outputs" / "earlyon_bench"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "earlyon_head_to_head"
METHODS = ("scan", "earlyon")
LABEL = {"scan": "SCAN (ours)", "earlyon": "earlyon 0.3.0"}
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
THRESHOLD_SPLIT = 2500          # first part of the 5,000-image validation split; the rest fits temperatures


# ------------------------------------------------------------------------------------------------ data
def compose_scan_config(lr: float = 0.05, epochs: int = 2, seed: int = 0, train_images: int = 20_000):
    """Our Hydra config for the SCAN ResNet18 on Fashion-MNIST, with this benchmark's overrides."""
    from hydra import compose, initialize_config_dir

    from scan_lightning.utils.defaults import config_dir

    overrides = ["model=resnet18", "data=fashion_mnist", "loss=scan_code", "logger=none", "callbacks=none",
                 f"optim.optimizer.lr={lr}", f"trainer.max_epochs={epochs}", f"seed={seed}",
                 f"data.max_train_samples={train_images}", f"paths.data_dir={REPO / 'data'}",
                 f"paths.output_dir={OUT_DIR}"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def _materialise(dataset, batch: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch, shuffle=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def make_split(path: Path, seed: int, train_images: int) -> dict:
    """The one split both methods use, from our ``FashionMNISTDataModule``; saved to ``path`` (reused if there)."""
    if path.is_file():
        split = torch.load(path, weights_only=True)
        if split["seed"] == seed and split["train_x"].shape[0] == train_images:
            return split
    from scan_lightning.utils.config import build

    cfg = compose_scan_config(seed=seed, train_images=train_images)
    dm = build(cfg.data)
    dm.prepare_data()          # local IDX files only (data.download=false): nothing is downloaded
    dm.setup(None)
    train_idx, val_idx = dm.split_indices(len(dm.train_set.dataset))
    train_x, train_y = _materialise(dm.train_set)
    val_x, val_y = _materialise(dm.val_set)
    test_x, test_y = _materialise(dm.test_set)
    split = {"seed": seed, "train_x": train_x, "train_y": train_y,
             "thr_x": val_x[:THRESHOLD_SPLIT], "thr_y": val_y[:THRESHOLD_SPLIT],
             "temp_x": val_x[THRESHOLD_SPLIT:], "temp_y": val_y[THRESHOLD_SPLIT:],
             "test_x": test_x, "test_y": test_y,
             "train_indices": train_idx, "val_indices": val_idx}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(split, path)
    return split


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int = 256):
    return list(zip(x.split(size), y.split(size), strict=True))


def loader_of(x: torch.Tensor, y: torch.Tensor, size: int = 256) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=size, shuffle=False)


def train_loader(split: dict, batches_per_epoch: int, batch_size: int, seed: int) -> DataLoader:
    """Each epoch: ``batches_per_epoch`` batches drawn without replacement from the training split (seeded)."""
    ds = TensorDataset(split["train_x"], split["train_y"])
    sampler = RandomSampler(ds, num_samples=batches_per_epoch * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True)


class Progress:
    """Iterable wrapper printing progress every ``every`` batches (for the long runs' logs)."""

    def __init__(self, loader: DataLoader, tag: str, every: int = 10) -> None:
        self.loader, self.tag, self.every, self.start = loader, tag, every, time.perf_counter()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i and i % self.every == 0:
                print(f"  [{self.tag}] batch {i}/{len(self.loader)} ({time.perf_counter() - self.start:.0f} s)",
                      flush=True)
            yield batch


# ------------------------------------------------------------------------------------------------ models
def build_earlyon(seed: int):
    """earlyon's wrapper (``custom_ee``) on the CIFAR-stem ResNet18 at 1 input channel, exits after layer1-3.

    torchvision's ResNet18 with the CIFAR stem (3x3/1 conv, no max-pool; the new conv gets torchvision's own
    init), rewritten as an ``nn.Sequential`` so earlyon's staged deployment can split it at the exits.
    """
    from earlyon.models import custom_ee
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    r = resnet18(num_classes=NUM_CLASSES)
    conv1 = nn.Conv2d(INPUT_SHAPE[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    backbone = nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv1, r.bn1, r.relu), layer1=r.layer1, layer2=r.layer2, layer3=r.layer3,
        layer4=r.layer4, classifier=nn.Sequential(r.avgpool, nn.Flatten(1), r.fc)))
    return custom_ee(backbone, ["layer1", "layer2", "layer3"], NUM_CLASSES, input_shape=(1, *INPUT_SHAPE))


def build_scan(lr: float, epochs: int, seed: int, train_images: int):
    """Our LightningModule from the composed config (``scan_lightning.training.builders.build_module``) and the config."""
    import pytorch_lightning as pl

    from scan_lightning.training.builders import build_module

    cfg = compose_scan_config(lr, epochs, seed, train_images)
    pl.seed_everything(seed, workers=True, verbose=False)
    return build_module(cfg), cfg


def load_scan(path: Path):
    from scan_lightning.utils.config import build

    ckpt = torch.load(path, weights_only=True)
    net = build(ckpt["model_config"], key="model")
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), ckpt


def load_earlyon(path: Path):
    ckpt = torch.load(path, weights_only=True)
    model = build_earlyon(ckpt["seed"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


@torch.no_grad()
def final_exit_accuracy(method: str, model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Accuracy of every exit (shallowest first, final last) on ``(x, y)``, eval mode."""
    model.eval()
    correct = None
    for xb, yb in batches_of(x, y):
        outs = model(xb).logits if method == "scan" else model(xb, mode="training")
        c = torch.stack([(o.argmax(-1) == yb).sum() for o in outs])
        correct = c if correct is None else correct + c
    return (correct.double() / y.numel()).tolist()


# ------------------------------------------------------------------------------------------------ training
def train_job(job: dict) -> dict:
    """One training run (LR-grid run or final run), in a worker process; returns its record."""
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(job["threads"])
    split = torch.load(job["split_path"], weights_only=True)
    method, lr, epochs, bpe, seed = job["method"], job["lr"], job["epochs"], job["batches_per_epoch"], job["seed"]
    tag = f"{method} lr={lr} {job['kind']}"
    loader = Progress(train_loader(split, bpe, job["batch_size"], seed), tag)
    print(f"[{tag}] start: {epochs} x {bpe} batches of {job['batch_size']}, {torch.get_num_threads()} thread(s)",
          flush=True)
    start = time.perf_counter()
    if method == "scan":
        import pytorch_lightning as pl

        from scan_lightning.utils.config import to_plain

        module, cfg = build_scan(lr, epochs, seed, split["train_x"].shape[0])
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, deterministic=False)
        trainer.fit(module, train_dataloaders=loader)
        model = module.net.eval()
        state = {"model_config": to_plain(cfg.model), "loss_config": to_plain(cfg.loss),
                 "optim_config": to_plain(cfg.optim)}
    else:
        from earlyon.training import joint_train_backbone_and_exits

        model = build_earlyon(seed)
        joint_train_backbone_and_exits(model, loader, val_loader=None, epochs=epochs, lr=lr, device="cpu",
                                       on_epoch_end=lambda log: print(f"[{tag}] epoch {log.epoch}: loss {log.loss:.4f}",
                                                                      flush=True))
        model.eval()
        state = {"loss_weights": list(model.config.loss_weights)}
    train_s = time.perf_counter() - start
    accs = final_exit_accuracy(method, model, split["thr_x"], split["thr_y"])
    record = {**{k: job[k] for k in ("method", "lr", "kind", "epochs", "batches_per_epoch", "batch_size", "seed")},
              "images_seen": epochs * bpe * job["batch_size"], "train_wall_s": train_s,
              "threads": torch.get_num_threads(), "extension": bool(job.get("extension", False)),
              "val_exit_accuracy": accs, "val_final_accuracy": accs[-1]}
    if job.get("save_path"):
        torch.save({**state, "state_dict": model.state_dict(), "seed": seed, "record": record}, job["save_path"])
    print(f"[{tag}] done in {train_s:.0f} s; threshold-split accuracy per exit "
          f"{[round(a, 4) for a in accs]}", flush=True)
    return record


def run_train_stage(args, split_path: Path) -> None:
    grid_path = OUT_DIR / "lr_grid.json"
    grid = json.loads(grid_path.read_text()) if grid_path.is_file() and not args.force else []

    def done(method, lr):
        return any(r["method"] == method and math.isclose(r["lr"], lr) and
                   r["batches_per_epoch"] == args.grid_batches_per_epoch for r in grid)

    common = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
              "split_path": str(split_path)}
    method_lrs = {m: sorted(args.lrs) for m in METHODS}
    grid_jobs = [{**common, "method": m, "lr": lr, "kind": "grid", "batches_per_epoch": args.grid_batches_per_epoch}
                 for m in METHODS for lr in method_lrs[m] if not done(m, lr)]

    def rows_of(method):
        return [r for r in grid if r["method"] == method and r["batches_per_epoch"] == args.grid_batches_per_epoch
                and any(math.isclose(r["lr"], lr) for lr in method_lrs[method])]

    def best_row(method):
        return max(rows_of(method), key=lambda r: (r["val_final_accuracy"], -r["lr"]))

    def extension(method):
        """A further LR when the best one sits at an edge of this method's grid (at most --grid-extensions)."""
        lrs = method_lrs[method]
        if len(lrs) - len(args.lrs) >= args.grid_extensions:
            return None
        best = best_row(method)["lr"]
        if math.isclose(best, max(lrs)):
            return float(f"{max(lrs) * args.grid_step:.3g}")
        if math.isclose(best, min(lrs)):
            return float(f"{min(lrs) / args.grid_step:.3g}")
        return None

    def final_job(method):
        return {**common, "method": method, "lr": best_row(method)["lr"], "kind": "final",
                "batches_per_epoch": args.batches_per_epoch, "save_path": str(OUT_DIR / f"{method}.pt")}

    def final_needed(method):
        path = OUT_DIR / f"{method}.pt"
        if args.force or not path.is_file():
            return True
        rec = torch.load(path, weights_only=True)["record"]
        return (rec["batches_per_epoch"] != args.batches_per_epoch or rec["epochs"] != args.epochs
                or not math.isclose(rec["lr"], best_row(method)["lr"]))

    stage_start = time.perf_counter()
    ctx = mp.get_context("spawn")
    queue = list(grid_jobs)          # jobs not yet handed to a worker; a final run jumps the queue
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        running: dict = {}
        finals_started = set()

        def maybe_queue_finals():
            for m in METHODS:
                if m in finals_started or any(j["method"] == m for j in [*queue, *running.values()]):
                    continue
                extra = extension(m)
                while extra is not None:        # grid edge: try one LR further out first
                    method_lrs[m].append(extra)
                    print(f"{m}: best LR at the edge of {method_lrs[m][:-1]}, adding {extra} to its grid", flush=True)
                    if not done(m, extra):
                        queue.insert(0, {**common, "method": m, "lr": extra, "kind": "grid", "extension": True,
                                         "batches_per_epoch": args.grid_batches_per_epoch})
                        break
                    extra = extension(m)
                if any(j["method"] == m for j in queue) or not final_needed(m):
                    continue
                finals_started.add(m)
                job = final_job(m)
                print(f"final {m}: lr {job['lr']} (best final-exit accuracy on the threshold split)", flush=True)
                queue.insert(0, job)

        maybe_queue_finals()
        while queue or running:
            while queue and len(running) < args.workers:
                job = queue.pop(0)
                running[pool.submit(train_job, job)] = job
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                record = fut.result()
                if job["kind"] == "grid":
                    grid.append(record)
                    grid_path.write_text(json.dumps(grid, indent=2))
            maybe_queue_finals()
    print(f"train stage: {time.perf_counter() - stage_start:.0f} s wall", flush=True)


# ------------------------------------------------------------------------------------------------ our side
def scan_temperatures(temp_cache, num_exits: int) -> tuple[list[float], str]:
    """THE TEMPERATURE HOOK for our side: per-exit temperatures fitted on the *temperature* split.

    Uses ``scan_lightning.policy.calibration.fit_temperatures(cache) -> list[float]`` when that module
    exists; 1.0 for every exit until then.
    """
    try:
        from scan_lightning.policy.calibration import fit_temperatures
    except ImportError:
        return [1.0] * num_exits, "1.0 (scan_lightning.policy.calibration.fit_temperatures not available)"
    temps = [float(t) for t in fit_temperatures(temp_cache)]
    return temps, "fit_temperatures on the temperature split"


def scan_candidates(val, costs, temps: list[float]) -> list[dict]:
    """Threshold vectors to choose from, all searched on ``val`` at the exits' temperatures: "never exit",
    the GA (SCAN Algorithm 2) at several beta, and the budgeted (MSDNet) sweep, each with both fallbacks."""
    from scan_lightning.policy.scoring import Scorer
    from scan_lightning.policy.search import budget_sweep, genetic_search

    k = val.num_exits
    cands = [{"source": "never exit", "thresholds": [1.0] * k, "fallback": fb} for fb in ("deepest", "ensemble")]
    for fb in ("deepest", "ensemble"):
        exit_costs, plain = Scorer(costs).cost_model("macs", fb)   # exits a policy switches off cost nothing
        for beta in (25, 50, 100, 200, 400, 800, 1600, 3200, 6400):
            ga = genetic_search(val, exit_costs, plain, beta=float(beta), fallback=fb, seed=0,
                                temperatures=temps)
            cands.append({"source": f"GA beta={beta}", "thresholds": ga.thresholds, "fallback": fb})
        for p, thr in budget_sweep(val, temperatures=temps):
            cands.append({"source": f"budgeted p={p:.2f}",
                          "thresholds": thr.clamp(min=1e-6, max=1.0).tolist(), "fallback": fb})
    return cands


CONFIDENCE_Z = 1.2816   # one-sided 90 % normal quantile


def policy_correct(cache, policy) -> torch.Tensor:
    """(N,) whether the predictor under ``policy`` gets each cached sample right."""
    from scan_lightning.policy.exit_policy import choose_exits

    chosen = choose_exits(cache.confidence(policy.temperatures), torch.as_tensor(policy.thresholds, dtype=torch.float32))
    return cache.outcome(policy.fallback).gather(0, chosen[None])[0]


def pick_operating_point(cands: list[dict], drop: float) -> dict:
    """Cheapest candidate (validation mean MACs) whose accuracy drop from our final exit stays within ``drop`` at
    90 % one-sided confidence on the threshold split.

    Paired bound (McNemar-style): with ``gained`` / ``lost`` the samples the candidate gets right / wrong where the
    final exit does not, it is accepted when (gained - lost - z * sqrt(gained + lost)) / n >= -drop. "Never exit"
    (no disagreement) always passes. The plain rule (validation accuracy >= final - drop) picked the cheapest of
    ~60 candidates by a mean over 2,500 images and over-fitted them: in the first run it chose a point at 77.20 %
    on validation (final exit 77.12 %) that scored 76.87 % on test (final exit 77.28 %). Each candidate is tested
    alone (no correction for choosing among ~60), so the bound is a margin against over-fitting, not a guarantee.
    """
    def bound(c: dict) -> float:
        return (c["val_gained"] - c["val_lost"] - CONFIDENCE_Z * math.sqrt(c["val_gained"] + c["val_lost"])) / c["val_n"]

    ok = [c for c in cands if bound(c) >= -drop - 1e-9]
    return min(ok, key=lambda c: (c["val_mean_macs"], -c["val_accuracy"]))


def scan_simulated_predictions(cache, policy) -> torch.Tensor:
    """Per-sample predictions the predictor gives, from cached logits (for the equivalence check)."""
    from scan_lightning.policy.exit_policy import choose_exits

    conf = torch.stack([policy.confidence(cache.logits[i], i)[0] for i in range(cache.num_exits)])
    chosen = choose_exits(conf, torch.tensor(policy.thresholds, dtype=torch.float32))
    fallback = cache.logits.mean(0) if policy.fallback == "ensemble" else cache.logits[-1]
    preds = torch.cat([cache.logits.argmax(-1), fallback.argmax(-1)[None]])
    return preds.gather(0, chosen[None])[0]


# ------------------------------------------------------------------------------------------------ earlyon side
def earlyon_costs(model) -> dict:
    """Honest MACs of earlyon's network (flop_counter): each backbone child and each exit head."""
    from scan_lightning.cost.macs import count_macs

    model.eval()
    with torch.no_grad():
        h = torch.zeros(1, *INPUT_SHAPE)
        children = {}
        feats = {}
        for name, child in model.backbone.named_children():
            macs, h = count_macs(child, h)
            children[name] = macs
            feats[name] = h
        heads = {ep.name: count_macs(model.exit_heads[ep.name], feats[ep.layer_name])[0]
                 for ep in model.config.exit_points}
    names = list(children)
    prefix = [sum(children[n] for n in names[: names.index(ep.layer_name) + 1]) for ep in model.config.exit_points]
    return {"children": children, "heads": heads, "prefix": prefix, "backbone": sum(children.values())}


def earlyon_exit_macs(costs: dict, cfg) -> torch.Tensor:
    """(K + 1,) honest MACs of leaving at each exit (final last) under ``cfg``: backbone prefix plus every
    enabled head up to and including that exit (earlyon runs only enabled heads)."""
    head = [costs["heads"][ep.name] if cfg.enabled_exits[i] else 0 for i, ep in enumerate(cfg.exit_points)]
    out = [costs["prefix"][i] + sum(head[: i + 1]) for i in range(len(head))]
    out.append(costs["backbone"] + sum(head))
    return torch.tensor(out, dtype=torch.float64)


def earlyon_route(cache, cfg) -> torch.Tensor:
    """earlyon's routing rule on its cached logits (``HeadLogits``): first enabled exit that fires, else final.

    Same rule as ``earlyon.core.thresholds.simulate_policy`` (cross-checked against it on every use)."""
    k = len(cfg.exit_points)
    chosen = torch.full((cache.num_samples,), k, dtype=torch.long)
    for i in range(k - 1, -1, -1):
        if not cfg.enabled_exits[i]:
            continue
        t = cfg.temperatures[cfg.exit_points[i].name]
        probs = torch.softmax(cache.logits[i] / t, dim=-1)
        if cfg.routing_policy == "confidence":
            fires = probs.max(-1).values.double() >= cfg.confidence_thresholds[i]
        else:
            fires = (-(probs * probs.clamp_min(1e-12).log()).sum(-1)).double() <= cfg.entropy_thresholds[i]
        chosen[fires] = i
    return chosen


def earlyon_config_dict(cfg) -> dict:
    return {"confidence_thresholds": list(cfg.confidence_thresholds), "enabled_exits": list(cfg.enabled_exits),
            "temperatures": dict(cfg.temperatures), "routing_policy": cfg.routing_policy}


def apply_earlyon_config(model, conf: dict) -> None:
    model.config.confidence_thresholds = list(conf["confidence_thresholds"])
    model.config.enabled_exits = list(conf["enabled_exits"])
    model.config.temperatures = dict(conf["temperatures"])
    model.config.validate()


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Side:
    """One deployed model for the timing harness: callables returning (N,) predicted classes, or None."""

    name: str
    batch256: Callable[[torch.Tensor], torch.Tensor] | None
    batch1: Callable[[torch.Tensor], torch.Tensor] | None


def interleaved_timing(sides: list[Side], images: torch.Tensor, settings: dict) -> dict[str, dict]:
    """Images/s at batch ``settings['batch_size']`` and per-image latency at batch 1, the sides interleaved.

    Batch 256: ``passes`` passes over ``images`` per side (``torch.utils.benchmark.Timer``), the sides'
    order rotated every pass; images/s = images / median pass time (IQR kept). Batch 1: each of the first
    ``latency_images`` images timed ``latency_repeats`` times per side (``time.perf_counter``, sides
    interleaved image by image); an image's latency is its median over repeats; p50/p95 over images.
    Also returns each side's predictions on the images (an untimed pass) for the accuracy checks.
    """
    from torch.utils.benchmark import Timer

    bs, passes = settings["batch_size"], settings["passes"]
    batches = list(images.split(bs))
    n_lat = min(settings["latency_images"], images.shape[0])
    out: dict[str, dict] = {s.name: {} for s in sides}
    with torch.inference_mode():
        thr = [s for s in sides if s.batch256 is not None]
        for s in thr:   # warm-up and the predictions of the batched path
            out[s.name]["pred_batch"] = torch.cat([s.batch256(x) for x in batches])
        timers = {s.name: Timer(stmt="for x in batches: fn(x)", globals={"fn": s.batch256, "batches": batches},
                                num_threads=torch.get_num_threads()) for s in thr}
        times: dict[str, list[float]] = {s.name: [] for s in thr}
        for p in range(passes):
            for j in range(len(thr)):
                s = thr[(j + p) % len(thr)]
                times[s.name].append(timers[s.name].timeit(1).times[0])
        for s in thr:
            t = sorted(times[s.name])
            q1, med, q3 = statistics.quantiles(t, n=4) if len(t) > 1 else (t[0], t[0], t[0])
            out[s.name].update({"batch_size": bs, "images": images.shape[0], "passes": passes,
                                "pass_s": times[s.name], "images_per_s": images.shape[0] / statistics.median(t),
                                "images_per_s_iqr": [images.shape[0] / q3, images.shape[0] / q1]})
        lat = [s for s in sides if s.batch1 is not None]
        singles = [images[i:i + 1] for i in range(n_lat)]
        for s in lat:   # warm-up and the predictions of the batch-1 path
            out[s.name]["pred_single"] = torch.cat([s.batch1(x) for x in singles])
        per: dict[str, list[list[float]]] = {s.name: [[] for _ in range(n_lat)] for s in lat}
        for r in range(settings["latency_repeats"]):
            for i, x in enumerate(singles):
                for j in range(len(lat)):
                    s = lat[(j + i + r) % len(lat)]
                    t0 = time.perf_counter()
                    s.batch1(x)
                    per[s.name][i].append(time.perf_counter() - t0)
        for s in lat:
            med = sorted(statistics.median(v) * 1e3 for v in per[s.name])
            out[s.name].update({"latency_images": n_lat, "latency_repeats": settings["latency_repeats"],
                                "p50_ms": _percentile(med, 0.50), "p95_ms": _percentile(med, 0.95),
                                "mean_ms": statistics.fmean(med)})
    return out


def _percentile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_scan(net, policy, costs, images: torch.Tensor, rivals: list[Side] = (), settings: dict | None = None
              ) -> dict[str, dict]:
    """OUR side's deployment forms and their timing, interleaved with ``rivals`` on the same ``images``.

    THIS is the one function to edit when our deployment form changes. Now: ``scan_lightning.export.deploy``
    (BatchNorm folded, patchify convs as GEMMs, channels-last) with the batch-compacting ``EarlyExitRunner``
    (eager PyTorch), and, where onnxruntime is installed, the same parts on onnxruntime driven by the same
    predictor. Both are timed in the same interleaved run; ``"scan"`` reports the faster form at each batch size
    (images/s at 256, p50 at 1), as earlyon's best of its eager wrapper and ``StagedModel`` is reported.
    """
    from scan_lightning.export import deploy
    from scan_lightning.runtime.early_exit import EarlyExitRunner
    from scan_lightning.runtime.forms import DeployOptions

    forms = {"scan_torch": DeployOptions()}
    try:
        import onnxruntime  # noqa: F401
        forms["scan_onnxruntime"] = DeployOptions(onnxruntime=True)
    except ImportError:
        pass
    ours = []
    for name, options in forms.items():
        predictor = EarlyExitRunner(deploy(net, options, costs), policy, costs)
        ours.append(Side(name, batch256=lambda x, p=predictor: p(x).prediction,
                         batch1=lambda x, p=predictor: p(x).prediction))
    result = interleaved_timing([*ours, *rivals], images, settings or DEFAULT_TIMING)
    fast256 = max(forms, key=lambda n: result[n]["images_per_s"])
    fast1 = min(forms, key=lambda n: result[n]["p50_ms"])
    label = {"scan_torch": "deploy(net): BN folded + in-place attention + patch GEMMs + channels-last + memory retained, eager PyTorch",
             "scan_onnxruntime": "deploy(net) parts on onnxruntime"}
    batch1_keys = [k for k in result[fast1] if k.startswith(("p50", "p95", "mean_ms", "pred_single", "latency"))]
    result["scan"] = {**result[fast256], **{k: result[fast1][k] for k in batch1_keys},
                      "deployment": f"batch 256: {label[fast256]}; batch 1: {label[fast1]} "
                                    f"(both forms timed, the faster shown; EarlyExitRunner with batch compaction)"}
    return result


DEFAULT_TIMING = {"batch_size": 256, "passes": 5, "latency_images": 200, "latency_repeats": 3}


# ------------------------------------------------------------------------------------------------ evaluate
def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def run_evaluate_stage(args, split: dict) -> dict:
    from earlyon.core.thresholds import HeadLogits, calibrate_thresholds, collect_head_logits, simulate_policy
    from earlyon.staged import staged_model

    from scan_lightning.cost.macs import measure_costs
    from scan_lightning.policy.cache import ExitCache, collect_outputs
    from scan_lightning.policy.exit_policy import ExitPolicy
    from scan_lightning.policy.scoring import evaluate_thresholds

    torch.set_num_threads(args.eval_threads)
    t_start = time.perf_counter()
    net, scan_ckpt = load_scan(OUT_DIR / "scan.pt")
    eo, eo_ckpt = load_earlyon(OUT_DIR / "earlyon.pt")
    drops = [float(d) for d in args.drops]
    res: dict = {"drops_points": [100 * d for d in drops]}
    # logits and earlyon's calibration depend only on the checkpoints and the split: kept in eval_cache.pt so
    # a rerun (e.g. with a new deployment form in time_scan) redoes the searches and timing only
    sizes = [int(split[k].shape[0]) for k in ("thr_y", "temp_y", "test_y")]
    scan_key = [*_stamp(OUT_DIR / "scan.pt"), *sizes]
    eo_key = [*_stamp(OUT_DIR / "earlyon.pt"), *sizes, args.earlyon_temperature, *drops]
    cache_path = OUT_DIR / "eval_cache.pt"
    stored = torch.load(cache_path, weights_only=True) if cache_path.is_file() and not args.fresh else {}

    # ---- ours: caches, costs, temperatures, threshold candidates on the threshold split
    if stored.get("scan_key") == scan_key:
        print("SCAN: exit logits from eval_cache.pt", flush=True)
        val, temp_cache, test = (ExitCache(*stored["scan"][k]) for k in ("val", "temp", "test"))
    else:
        print("SCAN: caching exit logits (threshold, temperature, test splits)", flush=True)
        val = collect_outputs(net, batches_of(split["thr_x"], split["thr_y"]))
        temp_cache = collect_outputs(net, batches_of(split["temp_x"], split["temp_y"]))
        test = collect_outputs(net, batches_of(split["test_x"], split["test_y"]))
        stored.update(scan_key=scan_key, scan={k: [c.logits, c.labels] for k, c in
                                               (("val", val), ("temp", temp_cache), ("test", test))})
        torch.save(stored, cache_path)
    costs = measure_costs(net, INPUT_SHAPE)
    plain_macs = costs.plain_macs
    def em(policy):   # MACs paid at each exit under ``policy`` (exit branches it skips are not run)
        return costs.exit_macs(torch.tensor(policy.skipped_heads(costs.chained)))

    temps, temps_source = scan_temperatures(temp_cache, net.num_exits)
    cands = scan_candidates(val, costs, temps)
    final_correct = val.correct()[-2]           # our final (deepest) exit, per threshold-split sample
    for c in cands:
        c["policy"] = ExitPolicy.create(c["thresholds"], temps, c["fallback"], num_exits=net.num_exits)
        r = evaluate_thresholds(val, c["policy"], em(c["policy"]))
        correct = policy_correct(val, c["policy"])
        assert abs(correct.float().mean().item() - r.accuracy) < 1e-9
        c.update(val_accuracy=r.accuracy, val_mean_macs=r.mean_macs, val_n=int(correct.numel()),
                 val_gained=int((correct & ~final_correct).sum()), val_lost=int((~correct & final_correct).sum()))
    scan_ref = final_correct.float().mean().item()
    scan_points = {}
    for d in drops:
        c = pick_operating_point(cands, d)
        policy = c["policy"]
        t = evaluate_thresholds(test, policy, em(policy))
        scan_points[d] = {"policy": policy, "source": c["source"], "val_accuracy": c["val_accuracy"],
                          "val_gained": c["val_gained"], "val_lost": c["val_lost"],
                          "val_mean_macs": c["val_mean_macs"], "test_accuracy": t.accuracy,
                          "test_mean_macs": t.mean_macs, "test_exit_fractions": t.exit_fractions}
    res["scan"] = {
        "lr": scan_ckpt["record"]["lr"], "train": scan_ckpt["record"], "temperatures": temps,
        "temperatures_source": temps_source, "val_final_accuracy": scan_ref,
        "val_exit_accuracy": val.accuracy().tolist(), "test_exit_accuracy": test.accuracy().tolist(),
        "costs": costs.to_dict(), "plain_macs": plain_macs, "num_candidates": len(cands),
        "points": {f"{100 * d:g}": {**{k: v for k, v in p.items() if k != "policy"}, **p["policy"].to_dict(),
                                     "mac_fraction": p["test_mean_macs"] / plain_macs}
                   for d, p in scan_points.items()}}

    # ---- earlyon: its own calibration (temperatures on the temperature split), then the test set
    thr_loader = loader_of(split["thr_x"], split["thr_y"])
    temp_loader = loader_of(split["temp_x"], split["temp_y"])
    eo_costs = earlyon_costs(eo)
    if stored.get("earlyon_key") == eo_key:
        print("earlyon: calibration and test logits from eval_cache.pt", flush=True)
        eo_points = {float(d): dict(p) for d, p in stored["earlyon"]["points"]}
        eo_test = HeadLogits(**stored["earlyon"]["test"])
    else:
        eo_points = {}
        for d in drops:
            print(f"earlyon: calibrate_thresholds(target_accuracy_drop={d})", flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = args.earlyon_temperature == "fit"
                cal = calibrate_thresholds(eo, thr_loader, target_accuracy_drop=d, device="cpu", fit_temperature=fit,
                                           temperature_loader=temp_loader if fit else None)
            eo_points[d] = {"config": earlyon_config_dict(eo.config), "val_accuracy": cal.final_accuracy,
                            "val_baseline_accuracy": cal.baseline_accuracy,
                            "val_estimated_flops_fraction": cal.avg_computation_used,
                            "val_exit_distribution": cal.exit_distribution}
        print("earlyon: caching head logits on the test set", flush=True)
        eo_test = collect_head_logits(eo, loader_of(split["test_x"], split["test_y"]), "cpu")
        stored.update(earlyon_key=eo_key, earlyon={
            "points": [[d, p] for d, p in eo_points.items()],
            "test": {"head_names": eo_test.head_names, "logits": eo_test.logits, "targets": eo_test.targets,
                     "flops": eo_test.flops}})
        torch.save(stored, cache_path)
    eo_plain = eo_costs["backbone"]
    for p in eo_points.values():
        apply_earlyon_config(eo, p["config"])
        chosen = earlyon_route(eo_test, eo.config)
        preds = torch.stack([h.argmax(-1) for h in eo_test.logits])[chosen, torch.arange(chosen.numel())]
        acc = (preds == eo_test.targets).double().mean().item()
        own = simulate_policy(eo_test, eo)
        assert abs(own.accuracy - acc) < 1e-12, (own.accuracy, acc)
        macs = earlyon_exit_macs(eo_costs, eo.config)[chosen].mean().item()
        k = len(eo.config.exit_points)
        p.update(test_accuracy=acc, test_mean_macs=macs, mac_fraction=macs / eo_plain,
                 test_estimated_flops_fraction=own.avg_flops_fraction,
                 test_exit_fractions=(torch.bincount(chosen, minlength=k + 1).double() / chosen.numel()).tolist())
    eo_test_acc = [(h.argmax(-1) == eo_test.targets).double().mean().item() for h in eo_test.logits]
    res["earlyon"] = {
        "lr": eo_ckpt["record"]["lr"], "train": eo_ckpt["record"], "temperature_scaling": args.earlyon_temperature,
        "val_final_accuracy": eo_points[drops[0]]["val_baseline_accuracy"], "test_exit_accuracy": eo_test_acc,
        "costs": eo_costs, "plain_macs": eo_plain,
        "own_flops_estimate": {"fractions": eo.flops_estimate.fractions, "method": eo.flops_estimate.method,
                               "excludes_exit_heads": eo.flops_estimate.excludes_exit_heads},
        "points": {f"{100 * d:g}": p for d, p in eo_points.items()}}
    res["evaluate_wall_s_before_timing"] = time.perf_counter() - t_start

    # ---- timing: same test images, interleaved, per operating point
    torch.set_num_threads(args.timing_threads)
    settings = {"batch_size": 256, "passes": args.passes, "latency_images": args.latency_images,
                "latency_repeats": args.latency_repeats}
    images = split["test_x"][: args.timing_images]
    labels = split["test_y"][: args.timing_images]
    load_before = os.getloadavg()
    timing = {}
    for d in drops:
        print(f"timing at drop {100 * d:g} point(s)", flush=True)
        apply_earlyon_config(eo, eo_points[d]["config"])
        staged = staged_model(eo)
        rivals = [Side("earlyon", batch256=lambda x: eo.forward_inference_batched(x).predictions.argmax(-1),
                       batch1=lambda x: eo(x, mode="inference").prediction.argmax(-1)),
                  Side("earlyon_staged", batch256=None,
                       batch1=lambda x, staged=staged: staged.infer(x).prediction.argmax(-1))]
        if d == drops[0]:   # the plain network (earlyon's bare backbone, eager), timed once for scale
            backbone = eo.backbone.eval()
            plain_fn = (lambda x, b=backbone: b(x).argmax(-1))
            rivals.append(Side("plain_resnet18", batch256=plain_fn, batch1=plain_fn))
        t = time_scan(net, scan_points[d]["policy"], costs, images, rivals, settings)
        # what each deployed form really returned on the timed images
        sim_scan = scan_simulated_predictions(collect_outputs(net, batches_of(images, labels)), scan_points[d]["policy"])
        with torch.inference_mode():
            batched = [eo.forward_inference_batched(x) for x in images.split(256)]
        eo_emacs = earlyon_exit_macs(eo_costs, eo.config)
        batched_macs = sum(eo_emacs[r.exit_taken].item() * r.predictions.shape[0] for r in batched) / images.shape[0]
        for name, rec in t.items():
            for key in ("pred_batch", "pred_single"):
                if key in rec:
                    pred = rec.pop(key)
                    rec[key.replace("pred", "accuracy")] = (pred == labels[: pred.numel()]).double().mean().item()
                    if name == "scan":
                        rec[key.replace("pred", "agreement_with_cache")] = \
                            (pred == sim_scan[: pred.numel()]).double().mean().item()
        t["earlyon"]["batched_exit_taken"] = [r.exit_taken for r in batched]
        t["earlyon"]["batched_mac_fraction"] = batched_macs / eo_plain
        timing[f"{100 * d:g}"] = t
    res["timing"] = timing
    res["timing_settings"] = {**settings, "timing_images": int(images.shape[0]), "threads": torch.get_num_threads(),
                              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    res["evaluate_wall_s"] = time.perf_counter() - t_start
    return res


# ------------------------------------------------------------------------------------------------ report
def best_batch1(t: dict) -> tuple[str, dict]:
    """earlyon's faster batch-1 form (eager wrapper or StagedModel) by p50."""
    forms = [(n, t[n]) for n in ("earlyon", "earlyon_staged") if "p50_ms" in t.get(n, {})]
    return min(forms, key=lambda f: f[1]["p50_ms"])


def write_report(res: dict, meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps({"meta": meta, **res}, indent=2, default=str))
    s, e = res["scan"], res["earlyon"]
    lines = [f"# SCAN vs earlyon {meta['earlyon_version']}: Fashion-MNIST, CIFAR-stem ResNet18 (1x28x28)", "",
             f"`python experiments/bench/{NAME}.py` - torch {meta['torch']}, {meta['cpus']} CPUs "
             f"({meta['machine']}, shared), training {res['scan']['train']['threads']} thread per run, timing "
             f"{res['timing_settings']['threads']} thread(s). Split (our `FashionMNISTDataModule`, seed "
             f"{meta['seed']}): {meta['split']['train']:,} training images, threshold split "
             f"{meta['split']['threshold']}, temperature split {meta['split']['temperature']} (both from the "
             f"5,000 held-out validation images), test {meta['split']['test']}.", "",
             f"Budget for both: SGD (momentum 0.9, wd 5e-4), batch {s['train']['batch_size']}, cosine over "
             f"{s['train']['epochs']} epochs of {s['train']['batches_per_epoch']} batches "
             f"({s['train']['images_seen']:,} images seen, drawn from the training split). "
             f"Training wall time: SCAN {s['train']['train_wall_s'] / 60:.1f} min, earlyon "
             f"{e['train']['train_wall_s'] / 60:.1f} min (1 thread each, run side by side on a shared machine).",
             "", "## LR grid (short runs, final-exit accuracy on the threshold split)", "",
             "Same schedule shape as the final runs, a quarter of the batches per epoch. A method whose best LR sits "
             "at an edge of the grid gets one more LR 3x further out (`--grid-extensions`).", "",
             "| method | lr | images seen | final-exit acc | all exits | wall s |", "|---|---|---|---|---|---|"]
    for r in sorted(meta["lr_grid"], key=lambda r: (r["method"], r["lr"])):
        lines.append(f"| {LABEL[r['method']]} | {r['lr']:g}{' (edge extension)' if r.get('extension') else ''} "
                     f"| {r['images_seen']:,} | {100 * r['val_final_accuracy']:.2f} "
                     f"| {' / '.join(f'{100 * a:.1f}' for a in r['val_exit_accuracy'])} | {r['train_wall_s']:.0f} |")
    lines += ["", f"Chosen: SCAN lr {s['lr']:g}, earlyon lr {e['lr']:g}.", "",
              "## Per-exit test accuracy (full test set) and honest cumulative MACs", "",
              "| exit | SCAN acc | SCAN M MACs | earlyon acc | earlyon M MACs (all heads enabled) |",
              "|---|---|---|---|---|"]
    sc = s["costs"]["exits"]
    eo_all = [e["costs"]["prefix"][i] + sum(list(e["costs"]["heads"].values())[: i + 1]) for i in range(3)]
    eo_all.append(e["costs"]["backbone"] + sum(e["costs"]["heads"].values()))
    for i in range(4):
        lines.append(f"| {i + 1} | {100 * s['test_exit_accuracy'][i]:.2f} | {sc[i]['cumulative_macs'] / 1e6:.1f} | "
                     f"{100 * e['test_exit_accuracy'][i]:.2f} | {eo_all[i] / 1e6:.1f} |")
    lines += [f"| plain ResNet18 | | {s['plain_macs'] / 1e6:.1f} | | {e['plain_macs'] / 1e6:.1f} |", "",
              "## Head to head", "",
              "Operating points chosen on the threshold split only. SCAN: the cheapest candidate whose accuracy drop "
              "from its own final exit there is at most the drop at 90 % one-sided confidence (paired bound: "
              "(gained - lost - 1.28 sqrt(gained + lost)) / n >= -drop, gained / lost = samples it gets right / wrong "
              "where the final exit does not). earlyon: its `calibrate_thresholds` (validation accuracy >= its final "
              "exit's minus the drop). "
              "MAC fraction = mean MACs paid per test image / plain ResNet18 MACs (same for both).", "",
              "| method | drop | val acc (final exit) | test acc | MAC fraction | images/s @256 | p50 ms @1 | p95 ms @1 |",
              "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for key in s["points"]:
        sp, ep, t = s["points"][key], e["points"][key], res["timing"][key]
        ts, te = t["scan"], t["earlyon"]
        b1_name, b1 = best_batch1(t)
        lines.append(f"| {LABEL['scan']} | {key} | {100 * sp['val_accuracy']:.2f} ({100 * s['val_final_accuracy']:.2f}) "
                     f"| {100 * sp['test_accuracy']:.2f} | {sp['mac_fraction']:.3f} | {ts['images_per_s']:.0f} | "
                     f"{ts['p50_ms']:.2f} | {ts['p95_ms']:.2f} |")
        lines.append(f"| {LABEL['earlyon']} | {key} | {100 * ep['val_accuracy']:.2f} ({100 * e['val_final_accuracy']:.2f}) "
                     f"| {100 * ep['test_accuracy']:.2f} | {ep['mac_fraction']:.3f} | {te['images_per_s']:.0f}* | "
                     f"{b1['p50_ms']:.2f}{'' if b1_name == 'earlyon' else ' (staged)'} | {b1['p95_ms']:.2f} |")
        verdicts.append((key, sp, ep, ts, te, b1_name, b1))
    plain = res["timing"][next(iter(res["timing"]))].get("plain_resnet18")
    if plain:
        lines.append(f"| plain ResNet18 (eager, no exits) | - | | {100 * e['test_exit_accuracy'][-1]:.2f}** | 1.000 | "
                     f"{plain['images_per_s']:.0f} | {plain['p50_ms']:.2f} | {plain['p95_ms']:.2f} |")
    lines += ["", "\\* earlyon at batch 256 is its `forward_inference_batched`: the whole batch leaves at the first "
              "exit where *every* sample is confident. What it actually returned on the timed images: "
              + "; ".join(f"drop {k}: accuracy {100 * res['timing'][k]['earlyon']['accuracy_batch']:.2f} %, MAC fraction "
                          f"{res['timing'][k]['earlyon']['batched_mac_fraction']:.3f}, batches' exits "
                          f"{res['timing'][k]['earlyon']['batched_exit_taken']} (-1 = final)" for k in s["points"])
              + ". The test-accuracy and MAC columns are its per-sample routing (batch 1).",
              "\\** earlyon's trained final classifier, for scale; the plain row times earlyon's bare backbone.", "",
              "Timing: " + f"{res['timing_settings']['timing_images']} test images, batch 256, median of "
              f"{res['timing_settings']['passes']} interleaved passes (`torch.utils.benchmark.Timer`); batch 1: first "
              f"{res['timing_settings']['latency_images']} of them, {res['timing_settings']['latency_repeats']} "
              "interleaved repeats each, per-image median, then p50/p95 over images. Load average before/after: "
              f"{' / '.join(f'{x:.1f}' for x in res['timing_settings']['loadavg_before'])} -> "
              f"{' / '.join(f'{x:.1f}' for x in res['timing_settings']['loadavg_after'])}. Ours: "
              f"{res['timing'][next(iter(res['timing']))]['scan']['deployment']}; its answers on the timed images "
              "agree with the cache-simulated policy on "
              + ", ".join(f"{100 * t['scan'].get('agreement_with_cache_batch', float('nan')):.1f} % (batch 256) / "
                          f"{100 * t['scan'].get('agreement_with_cache_single', float('nan')):.1f} % (batch 1) at drop {k}"
                          for k, t in res["timing"].items())
              + ". earlyon at batch 1: eager wrapper and `StagedModel`, the faster by p50 shown.", "", "## Reading", ""]
    lines += reading(res, verdicts)
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def reading(res: dict, verdicts: list) -> list[str]:
    """The reading: facts computed from the numbers (so a rerun keeps it true), then the fixed caveats."""
    s, e = res["scan"], res["earlyon"]
    plain = res["timing"][next(iter(res["timing"]))].get("plain_resnet18")
    out = []
    for key, sp, ep, ts, te, b1_name, b1 in verdicts:
        speed = ts["images_per_s"] / te["images_per_s"]
        lat = b1["p50_ms"] / ts["p50_ms"]
        dacc = 100 * (sp["test_accuracy"] - ep["test_accuracy"])
        goal = speed >= 1.5 and ts["p50_ms"] <= b1["p50_ms"] and dacc >= 0
        vs_plain = ""
        if plain:
            vs_plain = (f" Against the plain ResNet18 at batch 256: SCAN {_speed(ts['images_per_s'] / plain['images_per_s'])}, "
                        f"earlyon {_speed(te['images_per_s'] / plain['images_per_s'])}.")
        out.append(f"- **Drop {key} point(s)**: at batch 256 SCAN is {_speed(speed, 'earlyon')} "
                   f"({ts['images_per_s']:.0f} vs {te['images_per_s']:.0f} images/s); at batch 1 its p50 is "
                   f"{ts['p50_ms']:.2f} ms vs {b1['p50_ms']:.2f} ms for earlyon's "
                   f"{'StagedModel' if b1_name == 'earlyon_staged' else 'eager wrapper'} ({_speed(lat)}; p95 "
                   f"{ts['p95_ms']:.2f} vs {b1['p95_ms']:.2f} ms); test accuracy {100 * sp['test_accuracy']:.2f} vs "
                   f"{100 * ep['test_accuracy']:.2f} % ({dacc:+.2f} points); MAC fraction {sp['mac_fraction']:.3f} vs "
                   f"{ep['mac_fraction']:.3f}.{vs_plain} Goal: **{'met' if goal else 'not met'}** (>= 1.5x at 256: "
                   f"{'yes' if speed >= 1.5 else 'no'}; batch-1 p50 no worse: {'yes' if ts['p50_ms'] <= b1['p50_ms'] else 'no'}; "
                   f"test accuracy equal or better: {'yes' if dacc >= 0 else 'no'}).")
        if sp["source"] == "never exit":
            fb = sp.get("fallback", "ensemble")
            what = ("every exit switched off (deepest-exit fallback: no exit branch is run or charged), so it is the "
                    "plain network" if fb == "deepest" else "the ensemble fallback, which runs every exit branch")
            out.append(f"  - At drop {key} no early-exit candidate passed the bound on the threshold split, so SCAN's "
                       f"point is \"never exit\" with {what}: {sp['mac_fraction']:.2f}x the plain network's MACs, "
                       f"and its accuracy is its final exit's.")
    early = [(k, sum(x != -1 for x in t["earlyon"]["batched_exit_taken"]), len(t["earlyon"]["batched_exit_taken"]))
             for k, t in res["timing"].items()]
    out += [
        f"- Accuracy comes mostly from training, not routing: final exits on test are "
        f"{100 * s['test_exit_accuracy'][-2]:.2f} % (SCAN; ensemble {100 * s['test_exit_accuracy'][-1]:.2f} %) and "
        f"{100 * e['test_exit_accuracy'][-1]:.2f} % (earlyon) after the same {s['train']['images_seen']:,}-image "
        f"budget; the shallow exits (SCAN {' / '.join(f'{100 * a:.1f}' for a in s['test_exit_accuracy'][:3])} %, "
        f"earlyon {' / '.join(f'{100 * a:.1f}' for a in e['test_exit_accuracy'][:3])} %) decide how much can leave "
        "early. One seed, one short budget: differences under ~0.5 points are noise.",
        "- SCAN pays for its exits: attention modules and bottleneck heads cost "
        f"{(s['costs']['ensemble_macs'] - s['plain_macs']) / 1e6:.0f} M MACs on top of the "
        f"{s['plain_macs'] / 1e6:.0f} M plain network (earlyon's heads: "
        f"{sum(e['costs']['heads'].values()) / 1e3:.0f} k), so a SCAN sample that runs every exit branch costs "
        f"{s['costs']['ensemble_macs'] / s['plain_macs']:.2f}x the plain network, and a SCAN training step costs "
        f"more (training wall time above).",
        "- MACs are counted the same way for both (torch.utils.flop_counter, conv + matmul, every section and exit "
        "branch a sample ran). earlyon's own estimate (exit heads excluded) is "
        f"{e['own_flops_estimate']['method']}: "
        + " / ".join(f"{v:.2f}" for v in e["own_flops_estimate"]["fractions"].values())
        + " of the backbone at its exits, against the counted "
        + " / ".join(f"{p / e['plain_macs']:.2f}" for p in e["costs"]["prefix"])
        + ("; it fell back to uniform spacing because torchvision's BasicBlock calls its ReLU module twice"
           if e["own_flops_estimate"]["method"] == "uniform-fallback" else "") + ".",
        "- earlyon's batched mode lets a batch leave only when every sample in it is confident; on the timed images "
        + ", ".join(f"{n} of {m} batches left early at drop {k}" for k, n, m in early)
        + ". Its per-sample routing exists only at batch 1, so the batch-256 comparison is SCAN's per-sample "
        "batch compaction against earlyon's whole-batch rule.",
        "- CPU only, one thread, a 2-core machine shared with other jobs (load averages above): absolute numbers "
        "are low and noisy; interleaving makes the ratios fairer than the absolute values. No GPU numbers.",
    ]
    return out


def _speed(ratio: float, other: str | None = None) -> str:
    """``1.30x faster [than X]`` or ``0.80x the speed [of X]``."""
    if ratio >= 1.0:
        return f"{ratio:.2f}x faster" + (f" than {other}" if other else "")
    return f"{ratio:.2f}x the speed" + (f" of {other}" if other else "")


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    global OUT_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("all", "train", "evaluate"), default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--workers", type=int, default=2, help="training runs in parallel (processes)")
    parser.add_argument("--eval-threads", type=int, default=1, help="torch threads for caching/calibration")
    parser.add_argument("--timing-threads", type=int, default=1, help="torch threads while timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches-per-epoch", type=int, default=40, help="final runs")
    parser.add_argument("--grid-batches-per-epoch", type=int, default=10, help="LR-grid runs")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--grid-step", type=float, default=3.0, help="factor for an LR beyond the grid's edge")
    parser.add_argument("--grid-extensions", type=int, default=1,
                        help="LRs a method may add beyond the grid when its best sits at an edge")
    parser.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.01], help="accuracy drops (fractions)")
    parser.add_argument("--earlyon-temperature", choices=("fit", "none"), default="fit")
    parser.add_argument("--timing-images", type=int, default=512)
    parser.add_argument("--latency-images", type=int, default=200)
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="retrain even when results exist")
    parser.add_argument("--fresh", action="store_true", help="evaluate: recompute logits and earlyon's calibration")
    parser.add_argument("--out-dir", default=str(OUT_DIR), help="checkpoints and logs (git-ignored)")
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--eval-limit", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests only
    args = parser.parse_args()

    OUT_DIR = Path(args.out_dir)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    torch.set_num_threads(args.threads)
    split_path = OUT_DIR / "split.pt"
    split = make_split(split_path, args.seed, args.train_images)
    if args.eval_limit:   # smoke tests: truncate the evaluation splits (never for reported numbers)
        split = {k: (v[: args.eval_limit] if k[:3] in ("thr", "tem", "tes") else v) for k, v in split.items()}
    if args.stage in ("all", "train"):
        run_train_stage(args, split_path)
    if args.stage in ("all", "evaluate"):
        import earlyon

        res = run_evaluate_stage(args, split)
        meta = {"torch": torch.__version__, "earlyon_version": earlyon.__version__, "python": sys.version.split()[0],
                "machine": platform.machine(), "cpus": os.cpu_count(), "seed": args.seed,
                "split": {"train": int(split["train_x"].shape[0]), "threshold": int(split["thr_x"].shape[0]),
                          "temperature": int(split["temp_x"].shape[0]), "test": int(split["test_x"].shape[0])},
                "lr_grid": json.loads((OUT_DIR / "lr_grid.json").read_text()),
                "command": " ".join(sys.argv)}
        write_report(res, meta, Path(args.results))
        print((Path(args.results) / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
