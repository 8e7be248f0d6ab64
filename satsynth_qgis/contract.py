"""The engine's contract (``engine/satsynth/contract.py``), loaded by its file path.

The plugin must not import the ``satsynth`` package (it pulls the engine's deep-learning stack),
but it must agree with the engine on the class-table schema, the choice lists, the stage
defaults, the folder kinds and the progress protocol. That module is standard-library only, so
the plugin runs the engine's own copy: the one the plugin zip carries
(``engine_src/engine/satsynth/contract.py``, see scripts/package_plugin.py) or, in a checkout,
``../engine/satsynth/contract.py``. Use it as ``from ..contract import contract``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PLUGIN_DIR = Path(__file__).resolve().parent
#: Where the engine's contract.py is looked for, in this order: the plugin zip, a checkout.
CANDIDATES = (
    PLUGIN_DIR / "engine_src" / "engine" / "satsynth" / "contract.py",
    PLUGIN_DIR.parent / "engine" / "satsynth" / "contract.py",
)
MODULE_NAME = "satsynth_qgis._engine_contract"


def contract_path(candidates: tuple[Path, ...] = CANDIDATES) -> Path:
    """The engine's contract.py the plugin uses (ImportError naming the places looked in)."""
    for path in candidates:
        if path.is_file():
            return path
    raise ImportError("SatSynth: the engine's contract.py was not found (looked in "
                      + ", ".join(str(p) for p in candidates)
                      + "); reinstall the plugin from its zip")


def load_contract(path: Path) -> ModuleType:
    """Execute the contract file at ``path`` as a module of its own."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"SatSynth: cannot load the engine's contract from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # dataclasses resolve their module while being built
    spec.loader.exec_module(module)
    return module


contract = load_contract(contract_path())
