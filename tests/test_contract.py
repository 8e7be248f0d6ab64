"""satsynth/contract.py is shared by the engine and the QGIS plugin, which loads it by its file
path into QGIS's Python: it must import nothing but the standard library, and it must load on
its own, without the satsynth package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "engine" / "satsynth" / "contract.py"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found += [(n.lineno, a.name.split(".")[0]) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            found.append((n.lineno, "." if n.level else (n.module or "").split(".")[0]))
    return found


def non_stdlib_imports(path: Path) -> list[str]:
    """``file:line imports module`` for every import that is not the standard library's."""
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    return [f"{path.name}:{line} imports {mod}" for line, mod in sorted(_imported_modules(path))
            if mod not in allowed]


def test_the_contract_imports_only_the_standard_library():
    assert _imported_modules(CONTRACT), "no imports found: is the parser looking at the file?"
    assert non_stdlib_imports(CONTRACT) == []


def test_the_checker_catches_a_third_party_or_relative_import(tmp_path):
    bad = tmp_path / "contract.py"
    bad.write_text("import json\ndef f():\n    import numpy\nfrom . import errors\n")
    assert non_stdlib_imports(bad) == ["contract.py:3 imports numpy", "contract.py:4 imports ."]


def test_the_contract_loads_by_path_without_the_engine_package(tmp_path):
    """As the plugin loads it: by file path, in an interpreter where satsynth is not importable."""
    probe = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('probe_contract', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert 'satsynth' not in sys.modules\n"
        "print(m.parse_class_table([{'id': 3, 'name': 'water'}]).classes[0].hex())\n"
    )
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(CONTRACT)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("#")
