"""Evaluate a checkpoint: ``python -m scan_lightning.evaluate ckpt_path=... [thresholds=[...]]`` (Hydra).

Per-exit table, anytime and budgeted curves, and dynamic inference at saved (``thresholds.json`` next to
the checkpoint), given, or freshly searched thresholds, with the measured wall clock of the real early-exit
predictor against the plain network, both in the deployment form (``timing.deploy``), at each
``timing.batch_sizes``. The same pipeline as the post-fit ``ThresholdSearch`` callback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from scan_lightning.config import build, config_dir
from scan_lightning.inference.analysis import check_search
from scan_lightning.inference.cost import measure_costs
from scan_lightning.inference.pipeline import check_timing, run_post_fit
from scan_lightning.inference.policy import resolve_policy
from scan_lightning.module import MultiExitModule
from scan_lightning.report import exit_rows, print_dynamic_summary, print_exit_table


def evaluate(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt_path`` (weights_only), rebuild its data from the stored run config, report."""
    search = OmegaConf.to_container(cfg.search, resolve=True)
    timing = OmegaConf.to_container(cfg.timing, resolve=True)
    check_search(search)
    check_timing(timing)
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
    module = MultiExitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    net = module.net.eval()
    run_cfg = OmegaConf.create(module.hparams.run_config)
    given = cfg.get("thresholds")
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else given
    policy = None if given == "search" else resolve_policy(
        net.num_exits, ckpt, given, cfg.get("thresholds_path"), cfg.get("temperatures"), cfg.get("fallback"),
        required=False)

    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    dm = build(data_cfg)
    dm.prepare_data()
    dm.setup("test")
    shape = (run_cfg.data.in_channels, run_cfg.data.image_size, run_cfg.data.image_size)
    result = run_post_fit(net, dm.val_dataloader(), dm.test_dataloader(), shape, search, timing, policy,
                          progress=True)
    acc = {r["exit"]: r["accuracy"] for r in result["anytime"]}
    costs = measure_costs(net, shape)
    print_exit_table(exit_rows(costs, acc), f"Per-exit test results ({ckpt.name})", costs.plain_macs)
    print_dynamic_summary(result)
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
