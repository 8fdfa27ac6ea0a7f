"""Imports run one way: models <- losses <- inference <- module / callbacks <- entry points (read from the source)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scan_lightning"
# what each layer must not import (package-relative module prefixes, and third-party training frameworks)
FORBIDDEN = {
    "models": ("scan_lightning.losses", "scan_lightning.inference", "scan_lightning.module", "scan_lightning.callbacks",
               "scan_lightning.builders", "scan_lightning.data", "pytorch_lightning", "lightning", "hydra"),
    "losses": ("scan_lightning.inference", "scan_lightning.module", "scan_lightning.callbacks",
               "scan_lightning.builders", "pytorch_lightning", "lightning", "hydra"),
    "inference": ("scan_lightning.module", "scan_lightning.callbacks", "scan_lightning.builders",
                  "scan_lightning.train", "scan_lightning.evaluate"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_from_the_layers_below(layer):
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files
    broken = {f.name: sorted(m for m in imported_modules(f) if m.startswith(FORBIDDEN[layer])) for f in files}
    assert not {k: v for k, v in broken.items() if v}, broken
