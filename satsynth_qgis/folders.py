"""SatSynth output folders as the plugin sees them: their markers and model configs.

The kinds, their marker files and the way a model folder names its kind (``config.json``'s
``kind``) are the engine's contract (:mod:`satsynth_qgis.contract`); this module adds only the
plugin's wording of a folder that does not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .contract import contract


def model_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json`` ({} when there is none or it is unreadable)."""
    return contract.model_config(folder)


def has_marker(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` holds the marker file of its ``kind`` (dataset.json, config.json...)."""
    return (Path(folder) / contract.FOLDER_KINDS[kind].marker).is_file()


def folder_problem(folder: Path, kind: str) -> str:
    """Why ``folder`` is not a usable folder of ``kind`` ('' when it is): it must exist, hold
    its kind's marker and, for a model folder, name that kind in its ``config.json``."""
    spec = contract.FOLDER_KINDS[kind]
    what = spec.plugin_text or spec.engine_text
    if not folder.is_dir():
        return f"{folder} does not exist: choose {what}."
    if not has_marker(folder, kind):
        return f"{folder} is not {what} (it has no {spec.marker})."
    if kind in contract.MODEL_KINDS:
        config = contract.read_json(folder / spec.marker)
        if not isinstance(config, dict):
            return f"{folder / spec.marker} cannot be read: choose {what}."
        found = config.get("kind")
        if found != kind:
            return f"{folder} is a {found} folder, not {what}."
    return ""
