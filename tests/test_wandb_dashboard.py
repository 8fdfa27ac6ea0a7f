"""The W&B dashboard of a run, read back from an offline run: resolved config, tags and group (one per sweep),
per-exit curves on the epoch axis, the per-exit table, figures, budgeted curve, policy in the summary, attention maps,
the checkpoint artifact; the same from ``evaluate``. Also the figures (title, legend outside the axes naming every
exit, values on the bars) and the config tree."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import open_dict

from scan_lightning.cli.evaluate import evaluate
from scan_lightning.cli.train import train
from scan_lightning.evaluation.result import AnytimePoint, BudgetedPoint, PostFitResult, StageScore
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.policy.scoring import Score
from scan_lightning.reporting.config_tree import print_config_tree
from scan_lightning.reporting.plots import figure_accuracy_vs_macs, figure_exit_histogram, run_title
from scan_lightning.utils.config import to_plain
from tests.helpers.compose import CONF, compose_cfg
from tests.helpers.wandb_offline import read_run, records

# the parts of a post-fit result the figures read: three exits
_TEST = StageScore(accuracy=0.7, mean_macs=1.8e6, exit_fractions=[0.5, 0.25, 0.125, 0.125], speedup_plain=1.67,
                   speedup_deepest=1.9, deepest_accuracy=0.72, ensemble_accuracy=0.73)
RESULT = PostFitResult(
    policy=ExitPolicy.create([0.9, 0.9, 0.9]), costs=SimpleNamespace(plain_macs=3e6), val=_TEST, test=_TEST,
    anytime=[AnytimePoint(n, 1e6 * (i + 1), 0.5 + 0.1 * i) for i, n in enumerate(["exit1", "exit2", "exit3", "ensemble"])],
    budgeted=[BudgetedPoint(p, [0.9] * 3, Score(0.5 + 0.1 * p, 1e6 * p, [0.25] * 4, 1.0, 1.0), 0.5, 1e6 * p)
              for p in (1.0, 1.5, 2.0)], model={})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legend_outside_axes(fig) -> bool:
    fig.canvas.draw()
    legend, axes = fig.legends[0].get_window_extent(), fig.axes[0].get_window_extent()
    return legend.x0 >= axes.x1


def test_run_title_names_model_data_and_run(make_cfg):
    cfg = to_plain(make_cfg("data=synthetic"))
    assert run_title(cfg) == "resnet18 x0.375 on Synthetic | out"
    cfg["paths"]["output_dir"] = str(cfg["paths"]["log_dir"] + "/train/runs/2024-01-01_00-00-00")
    cfg["data"] = {"_target_": "scan_lightning.data.CIFARDataModule", "variant": "cifar100"}
    assert run_title(cfg) == "resnet18 x0.375 on cifar100 | train/runs/2024-01-01_00-00-00"


@pytest.mark.parametrize("figure", [figure_accuracy_vs_macs, figure_exit_histogram])
def test_figures_have_the_run_title_and_a_legend_outside_naming_every_exit(figure):
    fig = figure(RESULT, "resnet18 on FashionMNIST | train/runs/x")
    assert fig.get_suptitle() == "resnet18 on FashionMNIST | train/runs/x"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"exit1", "exit2", "exit3"} <= set(labels)
    assert ("ensemble (all exits)" if figure is figure_accuracy_vs_macs else "fallback (ensemble)") in labels
    assert not fig.axes[0].get_legend() and legend_outside_axes(fig)


def test_exit_histogram_bars_carry_their_values():
    ax = figure_exit_histogram(RESULT).axes[0]
    assert [t.get_text() for t in ax.texts] == ["50.0%", "25.0%", "12.5%", "12.5%"]
    assert [round(p.get_height(), 3) for p in ax.patches] == [50.0, 25.0, 12.5, 12.5]


def test_config_tree_lists_the_resolved_groups_first_and_is_saved(make_cfg, tmp_path, caplog):
    cfg = make_cfg("data=synthetic")
    with caplog.at_level(logging.INFO, logger="scan_lightning"):
        text = print_config_tree(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "config_tree.log").read_text().strip() == text.strip()
    assert text in caplog.text
    branches = [line[4:] for line in text.splitlines() if line[:4] in ("├── ", "└── ")]
    assert branches[:4] == ["data", "model", "loss", "optim"] and {"seed: 0", "ckpt_path: null", "extras"} <= set(branches)
    assert "num_classes: 10" in text and "${" not in text   # resolved: model.num_classes came from data


@pytest.fixture
def hydra_job():
    """Compose ``train`` as Hydra gives it to a job (``mode``: RUN or MULTIRUN) and make it the current HydraConfig."""
    from hydra.core.hydra_config import HydraConfig

    def _make(mode: RunMode, *overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def test_sweep_jobs_share_a_group_are_named_by_their_overrides_and_tagged(hydra_job):
    job = hydra_job(RunMode.MULTIRUN, "logger=wandb", "loss.terms.kd.weight=0.3", "tags=[fashion]")
    w = job.logger.wandb
    assert w.group == f"train-{Path(job.hydra.sweep.dir).name}" and w.group != "train"
    assert w.name == "loss.terms.kd.weight=0.3,tags=[fashion]"   # logger=... is shared by every job: left out
    assert list(w.tags) == ["fashion", "multirun"]
    single = hydra_job(RunMode.RUN, "logger=wandb", "tags=[fashion]").logger.wandb
    assert (single.group, single.name, list(single.tags)) == ("train", None, ["fashion"])


# --- one short offline W&B run, read back ---------------------------------------------------------------------
TINY = ("data=synthetic", "model.backbone.width=0.125", "model.bottleneck_width=8", "data.train_samples=64",
        "data.test_samples=32", "data.val_size=16", "timing.enabled=false", "search.ga.population=8",
        "search.ga.generations=3", "search.budget_steps=4", "logger=wandb", "tags=[smoke]")
DASHBOARD = ("callbacks.wandb_dashboard.attention_every_n_epochs=1", "callbacks.wandb_dashboard.attention_images=2",
             "callbacks.wandb_dashboard.log_checkpoint=true")


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """W&B offline, every W&B folder (runs, artifact staging, cache, settings) in a tmp dir."""
    root = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(root / var.lower()))
        mp.setenv("WANDB_MODE", "offline")   # WandbLogger(offline=True) sets it; restored afterwards
        mp.setenv("WANDB_SILENT", "true")
        yield root


@pytest.fixture(scope="module")
def trained(offline_env, tmp_path_factory):
    """One epoch of a tiny SCAN network on synthetic data, logged to an offline W&B run: (config, metrics, run)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg([*TINY, *DASHBOARD, "trainer.max_epochs=1"], tmp)
    metrics = train(cfg)
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    return cfg, metrics, read_run(run_dir)


def table(path: Path) -> tuple[list, list]:
    t = json.loads(path.read_text())
    return t["columns"], t["data"]


def test_wandb_run_has_the_resolved_config_tags_group_and_per_exit_epoch_curves(trained):
    cfg, metrics, run = trained
    assert run.run.run_group == "train" and list(run.run.tags) == ["smoke"]
    # the resolved config, once: top-level groups as composed, no copy of it under the module's hyperparameters
    assert run.config["data"]["num_classes"] == 10 and run.config["model"]["num_classes"] == 10
    assert run.config["seed"] == 0 and run.config["logger"]["wandb"]["tags"] == ["smoke"]
    assert "run_config" not in run.config
    names = [f"exit{i}" for i in range(1, 5)] + ["ensemble"]
    for name in names:
        defined = run.metrics[f"val/acc/{name}"]
        assert defined.step_metric == "epoch" and defined.summary.max
        assert run.metrics[f"test/acc/{name}"].step_metric == "epoch"
        assert run.summary[f"val/acc/{name}"]["max"] == pytest.approx(metrics[f"val/acc/{name}"])
    assert run.metrics["val/loss/kd"].step_metric == "epoch"
    rows = [r for r in run.history if "val/acc/exit1" in r]
    assert len(rows) == 1 and rows[0]["epoch"] == 0


def test_a_run_file_read_while_a_record_is_being_written_gives_the_records_before_it(trained, tmp_path):
    """W&B's service writes the run file after ``wandb.finish()`` returns: the reader must stop at a half-written
    record, not fail to parse it."""
    (path,) = trained[2].dir.glob("run-*.wandb")
    data = path.read_bytes()
    full = list(records(path))
    for cut in (len(data) // 3, len(data) // 2, len(data) - 5):
        part = tmp_path / f"cut{cut}.wandb"
        part.write_bytes(data[:cut])
        got = list(records(part))
        assert 0 < len(got) < len(full) and got == full[:len(got)]


def test_wandb_run_has_exit_table_figures_budgeted_curve_policy_and_checkpoint(trained):
    cfg, metrics, run = trained
    out = Path(cfg.paths.output_dir)
    columns, data = table(*run.media("table/test/exit_table_*.table.json"))
    assert columns == ["exit", "cumulative_macs", "params", "accuracy"]
    assert [r[0] for r in data] == ["exit1", "exit2", "exit3", "exit4", "ensemble"]
    assert data[0][1] < data[3][1] and data[0][2] < data[3][2]   # cumulative: the deep exit costs the most
    assert [r[3] for r in data] == pytest.approx([metrics[f"test/acc/{r[0]}"] for r in data])
    for name in ("accuracy_vs_macs", "exit_histogram"):
        assert len(run.media(f"images/dynamic/{name}_*.png")) == 1
    assert len(run.media("images/attention/maps_*.png")) == 1    # epoch 0 of 1, attention every epoch
    columns, data = table(*run.media("table/dynamic/budgeted_table_*.table.json"))
    assert columns[:3] == ["budget_p", "mean_macs_M", "test_accuracy"] and len(data) == 4
    panel = run.config["_wandb"]["visualize"]["dynamic/budgeted"]["panel_config"]
    assert panel["panelDefId"] == "wandb/line/v0"
    assert panel["fieldSettings"] == {"x": "mean_macs_M", "y": "test_accuracy", "stroke": None}
    result = json.loads((out / "checkpoints" / "thresholds.json").read_text())
    for i in range(4):
        assert run.summary[f"dynamic/threshold/exit{i + 1}"] == pytest.approx(result["thresholds"][i])
        assert run.summary[f"dynamic/temperature/exit{i + 1}"] == pytest.approx(result["temperatures"][i])
    assert run.summary["dynamic/fallback"] == result["fallback"]
    (artifact,) = [a for a in run.artifacts if a.type == "model"]
    assert {c.path for c in artifact.manifest.contents} == {"model.ckpt", "thresholds.json"}
    assert artifact.metadata and json.loads(artifact.metadata)["checkpoint"] == json.loads(
        (out / "summary.json").read_text())["checkpoint"]
    assert (out / "config_tree.log").is_file()


def test_evaluate_logs_the_same_dashboard_to_wandb(trained, tmp_path):
    cfg, _, _ = trained
    ckpt = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["checkpoint"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        ev = compose("evaluate", overrides=[f"ckpt_path={ckpt}", "logger=wandb", "tags=[eval]", "timing.enabled=false",
                                            "search.budget_steps=4"])
    GlobalHydra.instance().clear()
    with open_dict(ev):
        ev.paths.output_dir = str(tmp_path / "eval")
    result = evaluate(ev)
    (run_dir,) = (tmp_path / "eval" / "wandb").glob("offline-run-*")
    run = read_run(run_dir)
    assert run.run.run_group == "evaluate" and list(run.run.tags) == ["eval"] and run.config["ckpt_path"] == ckpt
    _, data = table(*run.media("table/test/exit_table_*.table.json"))
    assert [r[3] for r in data] == pytest.approx([a.accuracy for a in result.anytime])
    assert run.media("images/dynamic/accuracy_vs_macs_*.png") and run.media("table/dynamic/budgeted_table_*.table.json")
    assert run.summary["dynamic/threshold/exit1"] == pytest.approx(result.policy.thresholds[0])
    assert run.summary["test/dynamic/accuracy"] == pytest.approx(result.test.accuracy)


def test_fast_dev_run_with_wandb_finishes_without_a_best_checkpoint(offline_env, tmp_path):
    """Lightning's fast_dev_run swaps the loggers for a dummy: the dashboard's hooks and post-fit logging skip."""
    cfg = compose_cfg([*TINY, *DASHBOARD, "trainer.fast_dev_run=true"], tmp_path)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert not list(out.glob("wandb/offline-run-*"))
