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


# --------------------------------------------------------------------------------------------
# the engine's floors: every import points downwards, none goes round in a circle

ENGINE = "engine/satsynth"
#: The stages from the bottom floor up: a module imports its own stage and those below only.
FLOORS = ("data", "generator", "segmenter", "predict", "workflows")
#: Modules that may import anything: the command line that wires the stages together.
ENTRY_MODULES = {"satsynth.cli", "satsynth.__main__"}
DYNAMIC_IMPORTS = {"import_module", "find_spec", "__import__"}
#: Known upward imports still to remove, each with its reason (keep this empty where possible).
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["satsynth", *parts])


def engine_modules(root: Path | None = None) -> dict[str, Path]:
    """Every module of the engine's package, by dotted name."""
    root = root or ROOT / ENGINE
    files = sorted(root.rglob("*.py"))
    assert files, f"no Python files under {root}"
    return {_module_name(f, root): f for f in files}


def engine_imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """The engine modules that ``name`` imports (every level: inside functions too; relative
    imports resolved; ``from pkg import mod`` names the module ``mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for n in ast.walk(tree):
        targets: list[str] = []
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (n.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in n.names]
        for t in targets:
            while t and t not in known:  # "satsynth.data.store.ChipStore" -> the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.append((n.lineno, t))
    return found


def floor_of(module: str) -> str | None:
    """The stage a module belongs to; None for the shared modules at the bottom, "entry" for
    the command line."""
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FLOORS:
        return parts[1]
    return None


def import_graph(root: Path | None = None) -> dict[str, list[tuple[int, str]]]:
    mods = engine_modules(root)
    known = set(mods)
    return {m: engine_imports(m, p, known) for m, p in mods.items()}


def floor_violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Imports from a lower floor to a higher one, and from a shared module into any stage."""
    bad = []
    for mod, imports in sorted(graph.items()):
        here = floor_of(mod)
        if here == "entry":
            continue
        for line, target in imports:
            if (mod, target) in KNOWN_EXCEPTIONS:
                continue
            there = floor_of(target)
            if there == "entry" or (there is not None and (
                    here is None or FLOORS.index(there) > FLOORS.index(here))):
                bad.append(f"{mod}:{line} ({here or 'shared'}) imports {target} "
                           f"({there})")
    return sorted(set(bad))


def import_circles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for _, w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def dynamic_engine_imports(root: Path | None = None) -> list[str]:
    """``importlib``/``__import__`` calls that (may) load one of the engine's own modules: a
    ``satsynth`` name, or a computed name in a module that spells out ``satsynth.`` names."""
    bad = []
    for mod, path in sorted(engine_modules(root).items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own_names = any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                        and n.value.startswith("satsynth.") for n in ast.walk(tree))
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call) or not n.args:
                continue
            f = n.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if fname not in DYNAMIC_IMPORTS:
                continue
            arg = n.args[0]
            if isinstance(arg, ast.Constant):
                if isinstance(arg.value, str) and arg.value.split(".")[0] == "satsynth":
                    bad.append(f"{mod}:{n.lineno} {fname}({arg.value!r})")
            elif own_names:
                bad.append(f"{mod}:{n.lineno} {fname}(<computed name>)")
    return bad


def test_engine_has_no_import_circle():
    assert import_circles(import_graph()) == []


def test_engine_imports_point_down_the_floors():
    """data < generator < segmenter < predict < workflows; the shared modules import no stage."""
    graph = import_graph()
    assert {floor_of(m) for m in graph} >= {*FLOORS, None, "entry"}
    assert floor_violations(graph) == []


def test_engine_modules_import_each_other_by_name_only():
    assert dynamic_engine_imports() == []


def test_the_floor_checker_catches_violations(tmp_path):
    root = tmp_path / "satsynth"
    for pkg in ("", "data", "segmenter", "workflows"):
        (root / pkg).mkdir(exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "errors.py").write_text("def f():\n    from satsynth.data import store\n")
    (root / "data" / "store.py").write_text("from ..segmenter.train import x\n")
    (root / "segmenter" / "train.py").write_text(
        "import importlib\n\n\ndef g():\n    from satsynth.data.store import ChipStore\n"
        "    return importlib.import_module('satsynth.workflows.demo')\n")
    (root / "workflows" / "demo.py").write_text("from satsynth.segmenter import train\n")
    (root / "cli.py").write_text("from satsynth.workflows import demo\n")
    graph = import_graph(root)
    assert graph["satsynth.segmenter.train"] == [(5, "satsynth.data.store")]
    assert import_circles(graph) == [["satsynth.data.store", "satsynth.segmenter.train"]]
    assert floor_violations(graph) == [
        "satsynth.data.store:1 (data) imports satsynth.segmenter.train (segmenter)",
        "satsynth.errors:2 (shared) imports satsynth.data.store (data)"]
    assert dynamic_engine_imports(root) == [
        "satsynth.segmenter.train:6 import_module('satsynth.workflows.demo')"]


#: The longest an engine function may be, in lines, not counting its argument declarations
#: (``add_argument`` calls of a CLI's ``register``): a reader holds one in mind at a time.
MAX_FUNCTION_LINES = 100


def _declaration_lines(fn: ast.AST) -> int:
    """Lines of ``fn`` spent in argparse declarations (``p.add_argument(...)`` statements)."""
    lines = 0
    for node in ast.walk(fn):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "add_argument"):
            lines += node.end_lineno - node.lineno + 1
    return lines


def test_no_engine_function_is_longer_than_a_reader_can_hold():
    long = []
    for f in sorted((ROOT / "engine" / "satsynth").rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1 - _declaration_lines(fn)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{fn.lineno} {fn.name}: {n} lines")
    assert not long, "engine functions too long to read at once:\n" + "\n".join(long)
