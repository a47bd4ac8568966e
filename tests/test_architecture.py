"""The codebase's shape, checked: the pixel package Dask workers import is light, stages do not reach into each
other, and the library below the stages does not import them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The command line and the programs it runs start flows and stages: the only library modules that may import them.
ENTRY_POINTS = {"cli.py", "standalone.py", "deploy.py"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at the top or inside functions), by absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_importing_the_pixel_package_loads_neither_prefect_nor_bioio_nor_the_stages():
    code = ("import sys, zarrchive.pixels\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('zarrchive.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    top, ours = eval(out[0]), eval(out[1])
    assert not {"prefect", "bioio", "great_expectations", "distributed", "sqlalchemy"} & set(top), top
    assert not [m for m in ours if m.startswith(("zarrchive.tasks", "zarrchive.flows", "zarrchive.catalog"))], ours


@pytest.mark.parametrize("stage", sorted(p.name for p in (ROOT / "tasks").glob("*.py") if p.name != "__init__.py"))
def test_a_stage_does_not_import_another_stage(stage):
    own = f"zarrchive.tasks.{stage.removesuffix('.py')}"
    others = sorted(m for m in imports(ROOT / "tasks" / stage)
                    if m.startswith("zarrchive.tasks.") and not m.startswith(own))
    assert not others, f"{stage} imports {others}: what two stages share belongs below them"


def test_the_library_below_the_stages_does_not_import_them():
    found = {}
    for path in sorted((ROOT / "zarrchive").rglob("*.py")):
        if path.name in ENTRY_POINTS and path.parent == ROOT / "zarrchive":
            continue
        bad = sorted(m for m in imports(path) if m.startswith(("zarrchive.tasks", "zarrchive.flows")))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert not found, found
