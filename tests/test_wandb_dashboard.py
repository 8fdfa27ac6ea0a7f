"""The figures (title, legend outside the axes naming every exit, values on the bars), the config tree, and the
W&B run's identity in a sweep."""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import open_dict

from scan_lightning.config import to_plain
from scan_lightning.config_tree import print_config_tree
from scan_lightning.plots import figure_accuracy_vs_macs, figure_exit_histogram, run_title
from tests.conftest import CONF

RESULT = {   # the parts of a post-fit result (thresholds.json) the figures read: three exits
    "num_exits": 3, "fallback": "ensemble", "costs": {"plain_macs": 3e6},
    "budgeted": [{"p": p, "mean_macs": 1e6 * p, "accuracy": 0.5 + 0.1 * p} for p in (1.0, 1.5, 2.0)],
    "anytime": [{"exit": n, "macs": 1e6 * (i + 1), "accuracy": 0.5 + 0.1 * i}
                for i, n in enumerate(["exit1", "exit2", "exit3", "ensemble"])],
    "test": {"accuracy": 0.7, "deepest_accuracy": 0.72, "mean_macs": 1.8e6, "speedup_plain": 1.67,
             "exit_fractions": [0.5, 0.25, 0.125, 0.125]},
}


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
