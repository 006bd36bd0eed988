"""Layering: the library and the benchmarks never import the command (``minedet.cli``), and the detector layer
(``minedet/models/``) imports no config, method, engine or command.

The method registry lives in the library (``minedet/registry.py``); ``minedet/cli/`` parses arguments and
calls the library. The source is walked with ``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ``python -m minedet`` is the command's own entry point: it runs ``minedet.cli.main`` and nothing else.
ENTRY_POINTS = {ROOT / "minedet" / "__main__.py"}


def imports_of(source: str, modules: tuple[str, ...], package: str = "") -> list[str]:
    """Each import of one of ``modules`` (dotted names; their submodules count too) in ``source`` as
    ``LINE: statement``, in every form: ``import minedet.cli.x``, ``from minedet.cli.x import y``,
    ``from minedet import cli`` and relative imports (resolved against ``package``, the dotted package the
    file sits in)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        if any(n == m or n.startswith(m + ".") for n in names for m in modules):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def cli_imports(source: str, package: str = "") -> list[str]:
    """Each import of ``minedet.cli`` in ``source`` (:func:`imports_of`)."""
    return imports_of(source, ("minedet.cli",), package)


def checked_files() -> list[Path]:
    """Every module under ``minedet/`` outside ``minedet/cli/`` (less the entry point) and every file under ``benchmarks/``."""
    lib = {p for p in (ROOT / "minedet").rglob("*.py") if p.relative_to(ROOT / "minedet").parts[0] != "cli"}
    return sorted(lib - ENTRY_POINTS) + sorted((ROOT / "benchmarks").rglob("*.py"))


@pytest.mark.parametrize("src, package", [
    ("import minedet.cli", ""), ("import minedet.cli.registry as r", ""), ("from minedet.cli.demo import x", ""),
    ("from minedet import cli", ""), ("from minedet import run, cli as c", ""),
    ("def f():\n    from minedet.cli import main", ""),
    ("from .cli import main", "minedet"), ("from ..cli.registry import METHODS", "minedet.data"),
    ("from .. import cli", "minedet.data"),
])
def test_every_form_of_importing_cli_is_found(src, package):
    assert cli_imports(src, package)


@pytest.mark.parametrize("src, package", [
    ("import minedet.client", ""), ("from minedet.run import run_training", ""), ("from minedet import registry", ""),
    ("from .registry import METHODS", "minedet"), ("from . import cli", "minedet.data"), ("import cli", ""),
])
def test_other_imports_are_not_flagged(src, package):
    assert not cli_imports(src, package)


def test_nothing_outside_cli_imports_cli():
    files = checked_files()
    assert any(p.name == "run.py" for p in files) and any(p.parent.name == "benchmarks" for p in files)
    bad = {}
    for p in files:
        package = ".".join(p.relative_to(ROOT).parts[:-1])
        if hits := cli_imports(p.read_text(encoding="utf-8"), package):
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad, f"minedet.cli imported outside minedet/cli/ (the library and benchmarks call the library): {bad}"


def test_the_registry_is_in_the_library():
    assert (ROOT / "minedet" / "registry.py").is_file()
    assert not (ROOT / "minedet" / "cli" / "registry.py").exists()


#: what the detector layer (``minedet/models/``) may not import: it is built from plain values (a spec, options)
#: and knows no config, method, training loop or command
NOT_FOR_MODELS = ("minedet.config", "minedet.run", "minedet.registry", "minedet.methods", "minedet.engine",
                  "minedet.cli")


def test_the_models_layer_knows_no_config_method_engine_or_command():
    files = sorted((ROOT / "minedet" / "models").rglob("*.py"))
    assert any(p.name == "build.py" for p in files)
    bad = {}
    for p in files:
        package = ".".join(p.relative_to(ROOT).parts[:-1])
        if hits := imports_of(p.read_text(encoding="utf-8"), NOT_FOR_MODELS, package):
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad, f"minedet/models imports a layer above it: {bad}"
