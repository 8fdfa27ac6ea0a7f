"""Every paper overlay in conf/experiment composes with its paper's setting, and fast_dev_runs on synthetic data."""
from __future__ import annotations

import pytest

from scan_lightning.cli.train import train
from tests.helpers.compose import CONF, options

OVERLAYS = options("experiment")
# one per family in the default run; the rest (deep ResNets, VGG19, WRN-44, the ImageNet sizes) with `make test-slow`
LIGHT = {"scan_cifar100_resnet18", "scan_cifar100_vgg16_bn_baseline", "scan_cifar100_wrn20_8",
         "scan_imagenet_resnet18", "scan_fig2_resnet50_dsn", "imta_msdnet_cifar100", "imta_ablation_fashion",
         "sdn_cifar100_mobilenet", "ztw_cifar100_mobilenet"}


def test_every_published_scan_experiment_has_an_overlay():
    nets = ("vgg16_bn", "vgg19_bn", "resnet18", "resnet50", "resnet101", "resnet152", "wrn20_8", "wrn44_8")
    want = {f"scan_cifar100_{n}{b}" for n in nets for b in ("", "_baseline")}
    want |= {f"scan_imagenet_{n}{b}" for n in ("resnet18", "resnet50", "resnet101") for b in ("", "_baseline")}
    want |= {"scan_fig2_resnet50_dsn", "scan_fig2_resnet50_self_distillation", "imta_msdnet_cifar100",
             "imta_msdnet_imagenet"}
    assert want <= set(OVERLAYS), sorted(want - set(OVERLAYS))


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_composes_with_the_paper_setting(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.task_name == name
    terms = cfg.loss.terms
    if name.startswith("scan_") and name.endswith("_baseline"):      # a real single-exit run
        assert set(terms) == {"ce_deep", "ce"} and terms.ce.weight == 0.0
        assert cfg.callbacks.threshold_search is None
    elif name.startswith(("scan_cifar100", "scan_imagenet", "scan_fig2_resnet50_self")):   # Eq. 1 as printed
        assert terms.ce.exits == "all" and terms.kd.temperature == 1.0
    if name.startswith("scan_"):
        assert cfg.search.fallback == "ensemble"                      # Algorithm 1
        assert cfg.data._target_.endswith("ImageNetDataModule" if "imagenet" in name else "CIFARDataModule")
    if name.startswith("scan_fig2"):
        assert cfg.model.attention is False
    if name.startswith("imta_msdnet"):
        assert cfg.model.ge_scales == "all" and cfg.model.gradient_equilibrium is True
    if name.startswith("sdn_"):                                        # SDN's heads and ramp, jointly trained
        assert cfg.model.head == "sdn" and cfg.loss.terms.ce_ic.start == 0.01 and cfg.model.attention is False
    if name.startswith("ztw_"):                                        # cascade on a frozen, trained backbone
        assert cfg.model.isc == "cascade" and cfg.policy.rule == "running_ensemble"
        assert cfg.phases.ics.init_from == "backbone" and cfg.phases.ics.trainable
    if name.startswith("l2w_"):
        assert cfg.loss.terms.ce._target_.endswith("SampleWeightedCrossEntropy")
        assert cfg.callbacks.meta_reweighting._target_.endswith("MetaReweighting")
    if name.startswith("boostnet_"):                                   # additive exits, paper's gradient rescaling
        assert cfg.model.isc == "identity" and cfg.model.isc_detach and cfg.model.gradient_equilibrium
        assert cfg.model.ge_scales == "all"


def _synthetic(name: str) -> list[str]:
    size, stem = ("64", "imagenet") if "imagenet" in name else ("32", "cifar")
    return ["data=synthetic", "data.num_classes=10", f"data.image_size={size}", f"data.stem={stem}",
            "data.batch_size=4", "data.eval_batch_size=8", "data.val_size=16", "data.train_samples=64",
            "data.test_samples=16", "trainer.fast_dev_run=true", "timing.enabled=false", "logger=none",
            *(["callbacks.meta_reweighting.meta_size=16"] if name.startswith("l2w_") else [])]


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in LIGHT else pytest.mark.slow) for n in OVERLAYS])
def test_overlay_fast_dev_runs_on_synthetic_data(make_cfg, name):
    if name == "imta_ablation_fashion":
        cfg = make_cfg(f"experiment={name}", "trainer.fast_dev_run=true", "timing.enabled=false", "logger=none",
                       "data=synthetic", "data.in_channels=1", "data.image_size=28", "data.stem=cifar",
                       "data.val_size=16", "data.train_samples=64", "data.test_samples=16")
    else:
        cfg = make_cfg(f"experiment={name}", *_synthetic(name))
    metrics = train(cfg)
    assert any(k.startswith("test/acc/") for k in metrics)


def _fake_run(root, task: str, accs: list[float], ga: tuple[float, float] | None = None) -> None:
    import json

    run = root / task
    (run / "checkpoints").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(f"task_name: {task}\n")
    metrics = {f"test/acc/exit{i + 1}": a for i, a in enumerate(accs)} | {"test/acc/ensemble": max(accs) + 0.01}
    (run / "summary.json").write_text(json.dumps({"status": "finished", "checkpoint": "x", "metrics": metrics}))
    if ga:
        (run / "checkpoints" / "thresholds.json").write_text(
            json.dumps({"test": {"accuracy": ga[0], "speedup_plain": ga[1]}}))


def test_paper_table_collector_puts_the_paper_beside_our_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("scan_paper_table", CONF.parent / "experiments" / "scan_paper_table.py")
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)
    _fake_run(tmp_path, "scan_cifar100_resnet18", [0.70, 0.76, 0.78, 0.79], ga=(0.785, 2.1))
    _fake_run(tmp_path, "scan_cifar100_resnet18_baseline", [0.10, 0.10, 0.10, 0.77])
    _fake_run(tmp_path, "scan_fig2_resnet50_dsn", [0.7, 0.75, 0.78, 0.79])
    t = collector.tables(collector.runs([tmp_path]))
    (row,) = t["cifar100"]
    assert row["network"] == "resnet18" and row["baseline"] == pytest.approx(77.0)
    text = collector.markdown(t)
    assert "| resnet18 | 77.00 (77.09) | 70.00 (71.84) / 76.00 (77.74) / 78.00 (78.62) / 79.00 (79.13) |" in text
    assert "78.50 / 2.10x fewer" in text and "| DSN | 70.00 / 75.00 / 78.00 / 79.00 |" in text


def _load_script(name: str):
    """An experiment script as a module (registered in ``sys.modules``: its dataclasses look their module up)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, CONF.parent / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_exit_rules_scores_every_rule_on_a_short_run(short_run, tmp_path, one_thread):
    import json

    script = _load_script("exit_rules")
    from scan_lightning.policy.rules import RULE_NAMES

    out = tmp_path / "rules"
    assert script.main([str(short_run.out), "--out", str(out), "--images", "16", "--budget-steps", "6",
                        "--shared-steps", "6", "--coverage-trials", "3"]) == 0
    text = out.with_suffix(".json").read_text()
    result = json.loads(text)
    assert list(result["rules"]) == list(RULE_NAMES)
    assert str(tmp_path) not in text and str(short_run.out) not in text        # no machine paths
    for r in result["rules"].values():
        assert len(r["curve"]) >= 6 and set(r["operating_points"]) == set(script.UNITS)
        assert r["ga"]["test"]["ms_large"] > 0
        assert [p["drop"] for p in r["guarantee"]["points"]] == list(script.DROPS)
    assert len(result["rules"]["max_softmax"]["coverage"]["rates"]) == len(script.DROPS)
    assert result["rules"]["running_ensemble"]["rule_params"]["weights"]         # fitted on the fit part
    md = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in md for name in RULE_NAMES) and "docs/results/exit-rules.md" in md
    assert out.with_suffix(".png").stat().st_size > 0


def test_leaderboard_statistics_and_operating_points():
    lb = _load_script("leaderboard")
    assert lb.t_sf_two_sided(4.302653, 2) == pytest.approx(0.05, abs=1e-4)      # t table, df 2, two-sided 5 %
    assert lb.t_sf_two_sided(2.262157, 9) == pytest.approx(0.05, abs=1e-4)
    d = lb.paired([90.0, 91.0, 92.0], [89.0, 89.5, 91.5])
    assert d["mean"] == pytest.approx(1.0) and d["n"] == 3 and 0.05 < d["p"] < 0.5
    points = [{"val_acc": 0.80, "val_macs": 20.0, "test_acc": 0.79, "val_ms": 2.0},
              {"val_acc": 0.90, "val_macs": 60.0, "test_acc": 0.88, "val_ms": 6.0},
              {"val_acc": 0.85, "val_macs": 40.0, "test_acc": 0.86, "val_ms": 4.0}]
    assert lb.at_budget(points, "macs", 50.0) == pytest.approx(86.0)               # best validation that fits
    assert lb.at_budget(points, "macs", 100.0) == pytest.approx(88.0)
    assert lb.at_budget(points, "macs", 10.0) is None                              # none fits
