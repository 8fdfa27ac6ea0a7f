"""The resolved config as a tree (lightning-hydra-template's ``print_config_tree``): logged at the start of a run
and saved into its directory, so the values a run used are read at a glance, groups first."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.syntax import Syntax
from rich.tree import Tree

from scan_lightning.utils.logs import get_logger, render

log = get_logger(__name__)
ORDER = ("data", "model", "loss", "optim", "trainer", "callbacks", "logger", "search", "timing", "paths", "extras")
FILE = "config_tree.log"


def config_tree(cfg: DictConfig, order: tuple[str, ...] = ORDER) -> Tree:
    """One branch per top-level key, resolved: the groups in ``order`` first, then the rest as composed; run-level
    scalars (``seed: 0``) as leaves."""
    tree = Tree("CONFIG")
    for key in [k for k in order if k in cfg] + [k for k in cfg if k not in order]:
        value = cfg[key]
        if OmegaConf.is_config(value):
            tree.add(str(key)).add(Syntax(OmegaConf.to_yaml(value, resolve=True).rstrip("\n"), "yaml"))
        else:
            tree.add(OmegaConf.to_yaml({key: value}).rstrip("\n"))
    return tree


def print_config_tree(cfg: DictConfig, out_dir: Path) -> str:
    """Log the tree through the package's logger and write it to ``out_dir/config_tree.log``; returns the text."""
    text = "\n".join(line.rstrip() for line in render(config_tree(cfg)).splitlines())   # Syntax pads every line
    log.info(text)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / FILE).write_text(text + "\n")
    return text
