"""Build the QGIS plugin zip: ``dist/satsynth_qgis-<version>.zip``.

Layout (one top-level folder, as the official plugin repository requires)::

    satsynth_qgis/                 the plugin's Python code (no tests, caches or compiled files)
    satsynth_qgis/metadata.txt     from the repository's top-level metadata.txt
    satsynth_qgis/LICENSE
    satsynth_qgis/icons/ styles/ models/   from resources/
    satsynth_qgis/engine_src/      engine/satsynth/**.py + pyproject.toml + constraints.txt,
                                   installed by the plugin's "Set up engine" action

Usage: ``python3 scripts/package_plugin.py [--out dist]`` (``make package``). Prints the zip's path.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "satsynth_qgis"
#: Plugin-folder files that are not part of the plugin (developer-only).
SKIP_DIRS = {"__pycache__", "tests", "test", ".pytest_cache", ".ruff_cache", "engine_src"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe", ".o", ".a", ".lib",
                 ".class", ".jar", ".whl", ".egg", ".zip", ".tar", ".gz"}
#: Engine files the environment needs to build and run (source and small text data only).
ENGINE_SUFFIXES = {".py", ".json", ".yaml", ".yml", ".txt", ".md", ".typed"}
#: resources/ sub-folders shipped inside the plugin folder.
RESOURCE_DIRS = ("icons", "styles", "models")
RESOURCE_SUFFIXES = {".svg", ".png", ".qml", ".model3", ".json", ".txt", ".md", ".sld"}
MAX_BYTES = 25 * 1024 * 1024


def read_version(metadata: Path) -> str:
    """The ``version`` field of a metadata.txt."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(metadata, encoding="utf-8")
    try:
        return cp["general"]["version"].strip()
    except KeyError:
        raise SystemExit(f"{metadata}: no [general] version field") from None


def _wanted(path: Path, base: Path) -> bool:
    rel = path.relative_to(base)
    if any(part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info")
           for part in rel.parts[:-1]):
        return False
    name = rel.name
    if name.startswith(".") or name.startswith("test_") or name == "conftest.py":
        return False
    return path.suffix.lower() not in SKIP_SUFFIXES and ".partial" not in name


def collect(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(source file, path inside the zip) for everything the zip holds, sorted."""
    items: list[tuple[Path, str]] = []
    code = root / PLUGIN
    for f in sorted(code.rglob("*")):
        if f.is_file() and _wanted(f, code):
            items.append((f, f"{PLUGIN}/{f.relative_to(code).as_posix()}"))
    items.append((root / "metadata.txt", f"{PLUGIN}/metadata.txt"))
    items.append((root / "LICENSE", f"{PLUGIN}/LICENSE"))
    for sub in RESOURCE_DIRS:
        folder = root / "resources" / sub
        for f in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if f.is_file() and _wanted(f, folder) and f.suffix.lower() in RESOURCE_SUFFIXES:
                items.append((f, f"{PLUGIN}/{sub}/{f.relative_to(folder).as_posix()}"))
    engine = root / "engine" / "satsynth"
    for f in sorted(engine.rglob("*")):
        if f.is_file() and _wanted(f, engine) and f.suffix.lower() in ENGINE_SUFFIXES:
            items.append((f, f"{PLUGIN}/engine_src/engine/satsynth/"
                             f"{f.relative_to(engine).as_posix()}"))
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        if (root / name).is_file():
            items.append((root / name, f"{PLUGIN}/engine_src/{name}"))
    items.append((root / "LICENSE", f"{PLUGIN}/engine_src/LICENSE"))
    missing = [str(src) for src, _ in items if not src.is_file()]
    if missing:
        raise SystemExit("missing files for the plugin zip: " + ", ".join(missing))
    return items


def build(out_dir: Path = ROOT / "dist", root: Path = ROOT) -> Path:
    """Write the zip (atomically) and return its path."""
    version = read_version(root / "metadata.txt")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{version}.zip"
    tmp = target.with_name(target.name + ".partial")
    items = collect(root)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        folders = {"/".join(Path(arc).parts[:i]) + "/"
                   for _, arc in items for i in range(1, len(Path(arc).parts))}
        for name in sorted(folders):
            zf.writestr(zipfile.ZipInfo(name), "")
        for src, arc in items:
            zf.write(src, arc)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise SystemExit(f"{target.name} would be {size / 1e6:.1f} MB; the plugin repository "
                         f"accepts at most {MAX_BYTES / 1e6:.0f} MB")
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    args = parser.parse_args(argv)
    path = build(args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
