"""Where the configs live and what their groups default to: the YAML under ``conf/`` is the one home of every
default, read here with OmegaConf alone (no Hydra), so the layers below training can fill and check their settings."""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def config_dir() -> Path:
    """The ``conf/`` folder: inside the installed package (wheel), else the repository root (clone, editable)."""
    package = Path(__file__).resolve().parents[1]      # src/scan_lightning (clone) or site-packages/scan_lightning
    packaged = package / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    repo = package.parents[1] / "conf"
    if (repo / "train.yaml").is_file():
        return repo
    raise FileNotFoundError(f"scan_lightning configs not found in {packaged} or {repo}")


@functools.cache
def _group_defaults(group: str, option: str) -> str:
    node = OmegaConf.load(config_dir() / group / f"{option}.yaml")
    root = OmegaConf.create({"seed": 0, "node": node})          # ${seed} outside a run: 0
    return json.dumps(OmegaConf.to_container(root.node, resolve=True))


def group_defaults(group: str, option: str = "default") -> dict[str, Any]:
    """A config group's option (``conf/<group>/<option>.yaml``) as plain data, the one home of its defaults; an
    interpolated ``${seed}`` reads 0 outside a run."""
    return json.loads(_group_defaults(group, option))


def check_keys(given: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    """One clear error for keys of ``given`` that ``allowed`` does not have."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")


def merged(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``given`` over ``defaults``, one level of nested mappings deep, unknown keys refused."""
    given = dict(given or {})
    check_keys(given, defaults, where)
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], Mapping):
            if value is None:          # a null group (search.calibration: null) keeps its defaults
                continue
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{key}={value!r} must be a mapping with keys {sorted(defaults[key])}")
            check_keys(value, defaults[key], f"{where}.{key}")
            out[key] = {**defaults[key], **value}
        else:
            out[key] = value
    return out
