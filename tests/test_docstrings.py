"""Every public function, method and class of the package says what it does (read from the source, not imported).

Public: a name without a leading underscore, at module level or in a public class; dunder methods are exempt,
properties are not. Nested functions and the members of private classes are implementation details.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scan_lightning"
FILES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _is_accessor(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A property's setter or deleter, or a typing overload: the getter, or the implementation, carries the
    docstring."""
    return any((isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter"))
               or (isinstance(d, ast.Name) and d.id == "overload") for d in node.decorator_list)


def _definitions(body: list[ast.stmt]) -> list[Definition]:
    """The functions and classes a block defines, including those under module-level ``if`` / ``try`` / ``with``."""
    found: list[Definition] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                found += _definitions(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                found += _definitions(handler.body)
    return found


def undocumented(source: str) -> list[str]:
    """Qualified names (``Class.method``) of the public definitions in ``source`` that have no docstring."""
    missing: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in _definitions(body):
            name = node.name
            if name.startswith("_"):   # private, or a dunder method: exempt (a private class's members too)
                continue
            if isinstance(node, ast.ClassDef):
                if not ast.get_docstring(node):
                    missing.append(f"{prefix}{name} (line {node.lineno})")
                visit(node.body, f"{prefix}{name}.")
            elif not _is_accessor(node) and not ast.get_docstring(node):
                missing.append(f"{prefix}{name} (line {node.lineno})")

    visit(ast.parse(source).body, "")
    return missing


@pytest.mark.parametrize("path", FILES)
def test_public_definitions_have_docstrings(path):
    missing = undocumented((PACKAGE / path).read_text())
    assert not missing, f"{path}: public definitions without a docstring: {', '.join(missing)}"


def test_the_checker_sees_what_it_should():
    source = '''
class Public:
    """Documented."""
    def method(self): pass
    def _private(self): pass
    def __init__(self): pass
    @property
    def size(self): return 1
    @size.setter
    def size(self, value): pass
    class Inner:
        pass
class _Private:
    def method(self): pass
def function():
    def nested(): pass
if True:
    def conditional(): pass
async def coroutine():
    """Documented."""
'''
    assert [m.split(" ")[0] for m in undocumented(source)] == [
        "Public.method", "Public.size", "Public.Inner", "function", "conditional"]
