"""What the dock remembers between sessions, and where: QgsSettings under :data:`SETTINGS_PREFIX`.

The panel saves a :class:`DockSettings` whenever a stage starts and when the plugin unloads, and
restores it when it opens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qgis.core import QgsSettings

from .presets import DEFAULT_PRESET, PRESETS, StageSettings, preset

SETTINGS_PREFIX = "SatSynth/dock/"
DEFAULT_RUN_NAME = "satsynth run"


@dataclass(frozen=True)
class DockSettings:
    """The dock's remembered choices."""

    output_folder: str = ""
    run_name: str = DEFAULT_RUN_NAME
    #: the preset shown (always one of :data:`~.presets.PRESETS`)
    preset: str = DEFAULT_PRESET
    #: the Advanced section's values
    advanced: StageSettings = field(default_factory=lambda: preset(DEFAULT_PRESET))
    #: "raster" or "vector"
    label_mode: str = "vector"
    #: the area Segment covers: "layer", "canvas" or "aoi"
    extent_mode: str = "layer"


def load_settings() -> DockSettings:
    """The remembered settings; a missing or unreadable Advanced section is the preset's values."""
    s = QgsSettings()
    name = s.value(SETTINGS_PREFIX + "preset", DEFAULT_PRESET) or DEFAULT_PRESET
    saved = s.value(SETTINGS_PREFIX + "advanced", "")
    try:
        advanced = StageSettings.from_dict(json.loads(saved)) if saved else preset(name)
    except ValueError:
        advanced = preset(name)
    return DockSettings(
        output_folder=s.value(SETTINGS_PREFIX + "output_folder", "") or "",
        run_name=s.value(SETTINGS_PREFIX + "run_name", DEFAULT_RUN_NAME) or DEFAULT_RUN_NAME,
        preset=name if name in PRESETS else DEFAULT_PRESET,
        advanced=advanced,
        label_mode="raster" if s.value(SETTINGS_PREFIX + "label_mode", "vector") == "raster"
        else "vector",
        extent_mode=str(s.value(SETTINGS_PREFIX + "extent_mode", "layer")),
    )


def save_settings(settings: DockSettings) -> None:
    """Remember ``settings`` for the next session."""
    s = QgsSettings()
    s.setValue(SETTINGS_PREFIX + "output_folder", settings.output_folder)
    s.setValue(SETTINGS_PREFIX + "run_name", settings.run_name)
    s.setValue(SETTINGS_PREFIX + "preset", settings.preset)
    s.setValue(SETTINGS_PREFIX + "advanced", json.dumps(settings.advanced.to_dict()))
    s.setValue(SETTINGS_PREFIX + "label_mode", settings.label_mode)
    s.setValue(SETTINGS_PREFIX + "extent_mode", settings.extent_mode)


def open_reports() -> bool:
    """Whether finished evaluation and experiment reports open in the browser (default: yes)."""
    return bool(QgsSettings().value(SETTINGS_PREFIX + "open_reports", True, type=bool))
