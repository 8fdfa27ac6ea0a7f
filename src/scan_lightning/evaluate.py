"""Evaluate a checkpoint: ``python -m scan_lightning.evaluate ckpt_path=... [thresholds=[...]]`` (Hydra).

Per-exit table, anytime and budgeted curves, and dynamic inference at saved (``thresholds.json`` next to
the checkpoint), given, or freshly searched thresholds, with measured wall-clock speed-up of the real
early-exit predictor at each ``timing.batch_sizes``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from scan_lightning.config import build, config_dir
from scan_lightning.inference.analysis import check_search, load_thresholds, score_thresholds, search_and_score
from scan_lightning.inference.cache import collect_outputs
from scan_lightning.inference.cost import measure_costs
from scan_lightning.inference.policy import ExitPolicy, check_fallback, check_thresholds
from scan_lightning.inference.timing import first_images, measure_wall_clock
from scan_lightning.module import MultiExitModule
from scan_lightning.report import exit_rows, print_dynamic_summary, print_exit_table


def evaluate(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt_path`` (weights_only), rebuild its data from the stored run config, report."""
    check_search(OmegaConf.to_container(cfg.search, resolve=True))
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
    module = MultiExitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    net = module.net.eval()
    run_cfg = OmegaConf.create(module.hparams.run_config)
    given = cfg.get("thresholds")
    fresh = given == "search"
    given = None if fresh else given
    if given is not None:
        check_thresholds(given, net.num_exits, cfg.get("temperatures"))
        check_fallback(cfg.get("fallback") or "ensemble")
    saved = Path(cfg.thresholds_path) if cfg.get("thresholds_path") else ckpt.parent / "thresholds.json"
    if cfg.get("thresholds_path") and not saved.is_file():
        raise FileNotFoundError(f"thresholds_path={cfg.thresholds_path} does not exist")
    loaded = load_thresholds(saved, net.num_exits) if given is None and not fresh and saved.is_file() else None

    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    dm = build(data_cfg)
    dm.prepare_data()
    dm.setup("test")
    val = collect_outputs(net, dm.val_dataloader())
    test = collect_outputs(net, dm.test_dataloader())
    shape = (run_cfg.data.in_channels, run_cfg.data.image_size, run_cfg.data.image_size)
    costs = measure_costs(net, shape)
    if given is not None:
        result = score_thresholds(val, test, costs, [float(t) for t in given],
                                  [float(t) for t in (cfg.get("temperatures") or [1.0] * net.num_exits)],
                                  cfg.get("fallback") or "ensemble")
    elif loaded is not None:
        result = score_thresholds(val, test, costs, *loaded)
    else:
        result = search_and_score(val, test, costs, OmegaConf.to_container(cfg.search, resolve=True))
    acc = dict(zip([f"exit{i + 1}" for i in range(test.num_exits)] + ["ensemble"], test.accuracy().tolist()))
    print_exit_table(exit_rows(costs, acc), f"Per-exit test results ({ckpt.name})", costs.plain_macs)
    images = first_images(dm.test_dataloader(), int(cfg.timing.images))
    timings = measure_wall_clock(net, costs, ExitPolicy.from_dict(result), images, cfg.timing.batch_sizes,
                                 cfg.timing.repeats)
    print_dynamic_summary(result, timings)
    result["wall_clock"] = [t.to_dict() for t in timings]
    if cfg.get("output"):
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
