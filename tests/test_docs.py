"""The docs site: every module of the package has its API reference page entry, and every page the nav names exists
(``mkdocs build --strict`` in the test command checks links, anchors and docstrings)."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "scan_lightning"
SHIMS = {"scan_lightning.train", "scan_lightning.evaluate", "scan_lightning.describe", "scan_lightning.module"}


def modules() -> set[str]:
    out = set()
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__") or parts[1] in ("inference", "callbacks", "conf"):
            continue
        out.add(".".join(parts))
    return out - SHIMS


def test_every_module_is_in_the_api_reference():
    text = "\n".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    missing = sorted(m for m in modules() if f"::: {m}\n" not in text + "\n")
    assert not missing, missing


def test_every_nav_page_exists():
    class Loader(yaml.SafeLoader):   # mkdocs.yml's tags (!relative, !!python/name:...) do not matter here
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)  # noqa: S506

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    names = [p for p in pages(config["nav"]) if p.endswith(".md")]
    assert names and all((ROOT / "docs" / p).is_file() for p in names)
