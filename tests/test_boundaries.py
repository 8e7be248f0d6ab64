"""The two halves stay apart: the engine never imports QGIS/Qt, and the plugin never imports the
deep-learning stack at module level (QGIS's Python does not have it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QGIS_MODULES = {"qgis", "PyQt5", "PyQt6", "PySide2", "PySide6", "sip"}
HEAVY_MODULES = {"torch", "torchvision", "diffusers", "segmentation_models_pytorch", "accelerate",
                 "timm", "torchmetrics", "satsynth"}


def _imports(path: Path, top_level_only: bool) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # include imports inside top-level if/try blocks too
        stack, nodes = list(tree.body), []
        while stack:
            n = stack.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                stack.extend(n.body + n.orelse + getattr(n, "finalbody", []))
                for h in getattr(n, "handlers", []):
                    stack.extend(h.body)
    found = []
    for n in nodes:
        if isinstance(n, ast.Import):
            found += [(n.lineno, a.name.split(".")[0]) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            found.append((n.lineno, n.module.split(".")[0]))
    return found


def _check(folder: str, banned: set[str], top_level_only: bool) -> list[str]:
    bad = []
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    for f in files:
        for line, mod in _imports(f, top_level_only):
            if mod in banned:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def test_engine_never_imports_qgis_or_qt():
    assert _check("engine", QGIS_MODULES, top_level_only=False) == []


def test_plugin_does_not_import_the_deep_learning_stack_at_module_level():
    assert _check("satsynth_qgis", HEAVY_MODULES, top_level_only=True) == []


def test_the_checker_catches_a_violation(tmp_path, monkeypatch):
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import os\ntry:\n    from qgis.core import QgsProject\nexcept ImportError:\n    pass\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _check("engine", QGIS_MODULES, top_level_only=False) == ["engine/bad.py:3 imports qgis"]
