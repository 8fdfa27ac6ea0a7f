"""Sweeps: the Optuna search (hparams_search=scan_optuna) end to end, the metric the Hydra main returns, and the
README's documented sweeps: every grid expands, and its backbone x exits pairs and values compose and build."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from scan_lightning.cli.train import swept_metric, train_for_sweep
from scan_lightning.training.builders import build_module
from scan_lightning.utils.config import ConfigError
from tests.helpers.compose import CONF

README = Path(__file__).resolve().parents[1] / "README.md"
NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e-?\d+)?")
SEARCHED = {"loss.terms.kd.weight", "loss.terms.kd.temperature", "loss.terms.hint.weight", "optim.optimizer.lr"}
# a trial that trains for a few seconds on 2 CPU cores
TINY = ("data=synthetic", "data.image_size=16", "data.batch_size=16", "model.backbone.layers=[1,1,1,1]",
        "model.backbone.width=0.125", "model.bottleneck_width=8", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "+trainer.num_sanity_val_steps=0",
        "timing.enabled=false", "logger=none", "test=false", "search.ga.population=8", "search.ga.generations=3",
        "search.budget_steps=4")


def readme_commands(prefix: str = ".venv/bin/python -m scan_lightning.train") -> list[list[str]]:
    """The overrides of every training command in the README's Sweeps section (one list per command)."""
    section = README.read_text().split("## Sweeps\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(prefix):
                commands.append([a for a in shlex.split(line[len(prefix):], comments=True) if a != "-m"])
    return commands


def compose_job(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """Compose ``train.yaml`` (Hydra already initialised) as a launched job sees it: the job's config (outputs
    pointing nowhere in particular) and the ``hydra`` node, set as the current HydraConfig so ``${hydra:...}``
    (e.g. cluster=slurm's GPU counts) resolves."""
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        hydra_node = cfg.pop("hydra")
        cfg.paths.output_dir = "/nonexistent/out"
    return cfg, hydra_node


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


GRIDS = [c for c in readme_commands() if "hparams_search=scan_optuna" not in c]
SEARCHES = [c for c in readme_commands() if "hparams_search=scan_optuna" in c]


STRUCTURE = ("model", "model.backbone.name", "model.exit_after")   # the axes that change the network


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A subset of a grid's jobs holding every backbone x exits pair and every value of every other axis (the loss
    values interact with nothing but the loss, so this is every combination that can fail on its own)."""
    seen: set = set()
    chosen = []
    for job in jobs:
        values = dict(o.split("=", 1) for o in job)
        keys = {tuple((k, values[k]) for k in STRUCTURE if k in values)} | set(values.items())
        if keys - seen:
            chosen.append(job)
            seen |= keys
    return chosen


def test_optuna_search_runs_two_trials_end_to_end(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "scan_lightning.train", "hparams_search=scan_optuna", "hydra.sweeper.n_trials=2",
         f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY],
        cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # both trials ran and returned a finite value of the optimised metric to the sweeper
    trials = optuna.load_study(study_name="train", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(math.isfinite(t.value) for t in trials)
    assert all(set(t.params) == SEARCHED for t in trials)
    # each trial is a full run in <job number>_<digest>/ whose summary holds the value it returned
    runs = sorted((tmp_path / "sweep").glob("*_*/summary.json"))
    assert [p.parent.name.split("_")[0] for p in runs] == ["0", "1"]
    returned = sorted(t.value for t in trials)
    assert sorted(json.loads(p.read_text())["metrics"]["val/acc/ensemble"] for p in runs) == returned
    # the sweeper's report
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna" and set(result["best_params"]) == SEARCHED
    assert result["best_value"] == max(returned)


def test_swept_metric_is_the_named_float_or_one_clear_error():
    metrics = {"val/acc/ensemble": 0.75, "val/dynamic/accuracy": 0.5}
    assert swept_metric(metrics, "val/acc/ensemble") == 0.75
    assert isinstance(swept_metric({"m": 1}, "m"), float)
    assert swept_metric(metrics, None) is None
    with pytest.raises(ConfigError, match=r"optimized_metric='val/acc/ensembel' is not among this run's metrics; "
                                          r"choose one of \['val/acc/ensemble', 'val/dynamic/accuracy'\]"):
        swept_metric(metrics, "val/acc/ensembel")
    with pytest.raises(ConfigError, match="optimized_metric='test/acc/ensemble' would choose hyperparameters on "
                                          "the test set"):
        swept_metric({"test/acc/ensemble": 0.8}, "test/acc/ensemble")


def test_optimized_metric_on_the_test_set_stops_before_training(make_cfg):
    cfg = make_cfg(*TINY, "optimized_metric=test/acc/ensemble")
    with pytest.raises(ConfigError, match="optimized_metric='test/acc/ensemble' would choose hyperparameters"):
        train_for_sweep(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_readme_documents_grids_and_an_optuna_search():
    assert GRIDS and SEARCHES
    for overrides in GRIDS:   # every grid sweeps backbone x exits x alpha x lambda x T
        swept = {o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)
                 if o.is_sweep_override()}
        assert {"loss.terms.kd.weight", "loss.terms.hint.weight", "loss.terms.kd.temperature",
                "model.exit_after"} <= swept and swept & {"model", "model.backbone.name"}, overrides


@pytest.mark.parametrize("overrides", GRIDS, ids=lambda c: next((o for o in c if o.startswith("task_name=")), "grid"))
def test_documented_grid_composes_and_builds(hydra_conf, overrides):
    parsed = OverridesParser.create().parse_overrides(overrides)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    sizes = {o.get_key_element(): len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()}
    assert len(jobs) == math.prod(sizes.values()) > 1   # Hydra expands the documented product
    chosen = covering_jobs(jobs)
    assert len(chosen) >= math.prod(n for k, n in sizes.items() if k in STRUCTURE)
    for job in chosen:   # compose, resolve every interpolation (alpha in [0, 1] included), build the module
        cfg, _ = compose_job(job)
        OmegaConf.to_container(cfg, resolve=True)
        values = dict(o.split("=", 1) for o in job)
        for key in ("loss.terms.kd.weight", "loss.terms.kd.temperature", "loss.terms.hint.weight"):
            assert OmegaConf.select(cfg, key) == float(values[key]), key
        module = build_module(cfg)
        if cfg.model.exit_after is not None:   # an exit after each chosen section
            assert module.net.num_exits == len(cfg.model.exit_after), job


@pytest.mark.parametrize("overrides", SEARCHES, ids=lambda c: "-".join(o for o in c if o.startswith(
    ("cluster=", "optimized_metric="))) or "default")
def test_documented_optuna_search_composes_and_searches_real_keys(hydra_conf, overrides):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
    if "cluster=slurm" in overrides:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    cfg, hydra_node = compose_job(overrides)
    sweeper = hydra_node.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == SEARCHED and hydra_node.mode == RunMode.MULTIRUN
    assert cfg.optimized_metric.startswith("val/")   # chosen on the validation split
    for key in sweeper.params:   # the search space names keys this config has (plain numbers)
        assert isinstance(OmegaConf.select(cfg, key), float), key
    # one trial's overrides compose: each parameter at both ends of its range
    for end in (0, 1):
        trial = [f"{k}={NUMBER.findall(v)[end]}" for k, v in sweeper.params.items()]
        trial_cfg, _ = compose_job([*overrides, *trial])
        OmegaConf.to_container(trial_cfg, resolve=True)
        build_module(trial_cfg)
