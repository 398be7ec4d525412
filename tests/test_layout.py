"""The package map of docs/architecture.md holds: imports run downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "echo_lib"
# floor of each package: a module may import its own package and packages on lower floors only
FLOORS = {"core": 0, "agent": 1, "mining": 2, "world": 2, "training": 3, "evaluation": 4, "ops": 5}


def imported_packages(path: Path) -> set[str]:
    """The echo_lib packages a module imports anywhere in it (lazy imports in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "echo_lib" and len(parts) > 1 and parts[1] in FLOORS:
                found.add(parts[1])
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_stage_package() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    assert loose == [], f"modules outside the package map of docs/architecture.md: {loose}"
    assert {p.relative_to(PACKAGE).parts[0] for p in modules()} == set(FLOORS)


def upward_imports() -> list[str]:
    wrong = []
    for path in modules():
        own = path.relative_to(PACKAGE).parts[0]
        for other in sorted(imported_packages(path)):
            if other != own and FLOORS[other] >= FLOORS[own]:
                wrong.append(f"{path.relative_to(PACKAGE)} ({own}) imports {other}")
    return wrong


def test_imports_run_downwards() -> None:
    assert upward_imports() == []


def test_an_upward_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "config.py").write_text("def f():\n    from echo_lib.ops import cli\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    assert upward_imports() == ["core/config.py (core) imports ops"]
