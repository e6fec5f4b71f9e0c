"""Layers import downward only: a module may import its own layer or a layer listed before it, never one after.

The order is written once, here (docs/README "Package layout" quotes it). Every module under ``lckd_med/`` is
parsed with :mod:`ast`, so imports inside functions and under ``TYPE_CHECKING`` count too. Each layer holds one
kind of part; a cycle between two parts is only possible inside one layer, so the layers are kept narrow (the
methods and the engines were one layer, and ``import lckd_med.methods`` then failed on a cycle through the engines).
Each subpackage also imports on its own in a fresh interpreter (:func:`test_each_subpackage_imports_on_its_own`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lckd_med

#: bottom to top; names are the first component under ``lckd_med`` (a subpackage or a top-level module)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("constants", "modalities", "utils"),
    ("data",),
    ("metrics",),
    ("networks",),
    ("losses",),
    ("prediction",),  # the sliding-window subset predictor: election (engines) and inference both use it
    ("methods",),  # a method: its network, losses and state; the registry (rebuilds checkpoints' networks)
    ("engines",),  # the one trainer and its handlers (they run whatever method the registry gives)
    ("reports", "inference"),
    ("benchmarks", "cli", "compare", "demo"),  # entry points
)


PACKAGE = Path(lckd_med.__file__).parent
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``lckd_med`` modules one file imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
    return {m for m in found if m.split(".")[0] == "lckd_med"}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def _edges() -> list[tuple[str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _module_name(path)
        edges.extend((src, dst) for dst in sorted(_imports(path)))
    return edges


def upward_imports() -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where the imported module sits in a higher layer."""
    bad = []
    for src, dst in _edges():
        a, b = _layer(src), _layer(dst)
        if a is not None and b is not None and b > a:
            bad.append((src, dst))
    return bad


def test_every_package_part_has_a_layer():
    names = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert not names - set(RANK), f"add {sorted(names - set(RANK))} to LAYERS"


def test_no_upward_import():
    bad = [f"{src} imports {dst}" for src, dst in upward_imports()]
    assert not bad, "upward imports (see LAYERS):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("src", "dst", "upward"),
    [
        ("lckd_med.engines.election", "lckd_med.inference.batch", True),
        ("lckd_med.inference.batch", "lckd_med.engines.checkpoint", False),
        ("lckd_med.data.datalist", "lckd_med.constants", False),
        ("lckd_med.networks.fusion", "lckd_med.losses", True),
        ("lckd_med.reports.folder_scores", "lckd_med.inference.evaluation", False),  # same layer
        ("lckd_med.methods.lckd", "lckd_med.engines.election", True),  # the cycle of release 0.3.0
        ("lckd_med.engines.election", "lckd_med.methods.lckd", False),
    ],
)
def test_layer_rule(src, dst, upward):
    assert (_layer(dst) > _layer(src)) is upward


def test_only_the_cli_runs_the_data_prep_tools():
    """``data_prep`` is a command-line layer above the package: the library calls :mod:`lckd_med.data` instead."""
    users = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] == "data_prep" for n in names):
                users.add(_module_name(path))
    assert users <= {"lckd_med.cli"}, sorted(users)


def _subpackages() -> list[str]:
    names = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    return [f"lckd_med.{n}" for n in names]


def test_each_subpackage_imports_on_its_own():
    """``python -c "import lckd_med.<name>"`` works for every subpackage, whatever was imported before.

    One child interpreter for all of them (each a few seconds to start with torch and MONAI): before each import it
    forgets every ``lckd_med`` module, so each subpackage is imported as in a fresh interpreter; a cycle between
    lckd_med modules depends only on which of them are already loaded.
    """
    names = _subpackages()
    assert "lckd_med.methods" in names and "lckd_med.engines" in names
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'lckd_med' or m.startswith('lckd_med.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
