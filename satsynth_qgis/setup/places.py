"""Where the engine's environment goes and how it gets there: the default folders, the free
space it needs, the engine source copied for pip, and the finished environment moved into
place."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .errors import SetupError

PLUGIN_DIR = Path(__file__).resolve().parent.parent
#: Free disk space the set-up asks for before it starts (the environment, pip's unpacking and its
#: cache): torch's CPU build makes an environment of about 1.5 GB, a CUDA build 5-6 GB.
FREE_BYTES_CPU = 4 * 1024**3
FREE_BYTES_CUDA = 12 * 1024**3


def default_venv_dir() -> Path:
    """Where the engine's environment goes by default: next to the QGIS profiles, outside
    every plugin folder (so plugin upgrades keep it)."""
    try:
        from qgis.core import QgsApplication

        base = Path(QgsApplication.qgisSettingsDirPath())
        return base.parent.parent / "satsynth-engine" if base.parent.name == "profiles" \
            else base / "satsynth-engine"
    except Exception:  # noqa: BLE001 - outside QGIS (tests, scripts)
        return Path.home() / ".satsynth" / "engine"


def default_engine_src() -> Path:
    """The engine source the zip carries, or the repository itself in a checkout."""
    packed = PLUGIN_DIR / "engine_src"
    if (packed / "pyproject.toml").is_file():
        return packed
    return PLUGIN_DIR.parent


def staging_dir_for(venv_dir: Path) -> Path:
    """The folder the environment is built in before it replaces ``venv_dir`` (a hidden sibling,
    so the final move is a rename on the same disk)."""
    return venv_dir.with_name(f".{venv_dir.name}.satsynth-setup")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(folder: Path, needed: int) -> None:
    """Raise :class:`SetupError` when the disk that will hold ``folder`` has less than ``needed``
    bytes free."""
    where = _nearest_existing(folder)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        raise SetupError("check free disk space", f"cannot read the free space of {where} "
                         f"({exc}).", "Choose an environment folder on a local disk.") from None
    if free < needed:
        raise SetupError("check free disk space",
                         f"{where} has {free / 1024**3:.1f} GB free; the engine's environment "
                         f"needs about {needed / 1024**3:.0f} GB.",
                         "Free some space, or choose an environment folder on another disk.")


def move_into_place(staging: Path, venv_dir: Path, platform: str = sys.platform) -> None:
    """Replace ``venv_dir`` by the finished environment in ``staging``: the old one (if any) is
    renamed aside first and removed only once the new one is in place. Console scripts (pip,
    satsynth) name their Python by absolute path, so that path is rewritten (Windows' .exe
    launchers are written anew by the plan's last step)."""
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    old = venv_dir.with_name(f".{venv_dir.name}.satsynth-old")
    if old.exists():
        shutil.rmtree(old)
    if venv_dir.exists():
        venv_dir.rename(old)
    try:
        staging.rename(venv_dir)
    except OSError:
        if old.exists():
            old.rename(venv_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _retarget_scripts(venv_dir, staging, platform)


def _retarget_scripts(venv_dir: Path, staging: Path, platform: str) -> None:
    scripts = venv_dir / ("Scripts" if platform == "win32" else "bin")
    old_prefix, new_prefix = str(staging).encode(), str(venv_dir).encode()
    for f in scripts.iterdir() if scripts.is_dir() else []:
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if old_prefix not in data or (platform == "win32" and f.suffix == ".exe"):
            continue
        if data.startswith(b"#!") or f.name.startswith("activate"):
            f.write_bytes(data.replace(old_prefix, new_prefix))


def copy_engine_source(src: Path, dest: Path) -> None:
    """Copy only what pip needs to build the engine (no caches, no egg-info)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "README.md", "LICENSE"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if not (dest / "README.md").exists():  # pyproject.toml names it as the readme
        (dest / "README.md").write_text("SatSynth engine\n", encoding="utf-8")
    shutil.copytree(src / "engine" / "satsynth", dest / "engine" / "satsynth",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info"))
