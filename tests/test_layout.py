"""The package layout: no package imports from a package above it (STYLE.md, DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mldcn

ROOT = Path(mldcn.__file__).parent
#: each package, and the packages and top-level modules it may import (besides itself)
BASE = {"config", "features", "batch", "files", "extras", "metrics"}
ALLOWED = {
    "layers": BASE,
    "models": BASE | {"layers"},
    "data": BASE,
    "train": BASE | {"layers", "models", "data"},
    "serve": BASE | {"layers", "models", "data", "train"},
    "studies": BASE | {"layers", "models", "data", "train"},
}


def imported_parts(path: Path) -> set[str]:
    """The first name after ``mldcn.`` of every import in ``path``."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        parts |= {name.split(".")[1] for name in names if name.startswith("mldcn.")}
    return parts


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_from_a_package_above_it(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        above = imported_parts(path) - ALLOWED[package] - {package}
        assert not above, f"{path.relative_to(ROOT)} imports mldcn.{sorted(above)}, above {package}/"


def test_base_modules_import_only_each_other():
    for name in BASE:
        assert imported_parts(ROOT / f"{name}.py") <= BASE, name
