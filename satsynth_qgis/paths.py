"""Where the plugin's resources are: inside the plugin folder (installed zip) or the checkout."""

from __future__ import annotations

import configparser
from functools import lru_cache
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_DIR = PLUGIN_DIR.parent


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def icons_dir() -> Path:
    """``satsynth_qgis/icons`` in the zip, ``<repo>/resources/icons`` in a checkout."""
    return _first_existing(PLUGIN_DIR / "icons", REPO_DIR / "resources" / "icons")


def icon_path(name: str = "satsynth") -> str:
    """Path of ``<name>.svg`` (the plugin icon when that stage has none)."""
    path = icons_dir() / f"{name}.svg"
    return str(path if path.is_file() else icons_dir() / "satsynth.svg")


def models_dir() -> Path:
    """Shipped Processing models (``.model3``)."""
    return _first_existing(PLUGIN_DIR / "models", REPO_DIR / "resources" / "models")


def metadata_path() -> Path:
    return _first_existing(PLUGIN_DIR / "metadata.txt", REPO_DIR / "metadata.txt")


@lru_cache(maxsize=1)
def metadata() -> dict[str, str]:
    """The [general] section of metadata.txt ({} when it cannot be read)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(metadata_path(), encoding="utf-8")
        return dict(parser["general"])
    except (configparser.Error, KeyError, OSError):
        return {}


def plugin_version() -> str:
    """The plugin's version from metadata.txt."""
    return metadata().get("version", "0")
