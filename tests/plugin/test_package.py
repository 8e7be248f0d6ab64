"""The plugin zip (``make package``) against the official QGIS plugin repository's rules."""

from __future__ import annotations

import configparser
import zipfile
from pathlib import Path

import pytest
from dock_fixtures import build_plugin_zip

REPO = Path(__file__).resolve().parents[2]
#: Fields plugins.qgis.org refuses a plugin without (plus what issue 6 requires of ours).
REQUIRED_FIELDS = ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                   "email", "repository", "tracker")
#: Compiled or binary files the repository rejects (and files that do not belong in a plugin).
FORBIDDEN_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe", ".o", ".a",
                      ".lib", ".class", ".jar", ".whl", ".egg", ".zip", ".npy", ".npz", ".pt",
                      ".pth", ".safetensors", ".tif", ".gpkg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".ico")


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_plugin_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def names(plugin_zip) -> list[str]:
    with zipfile.ZipFile(plugin_zip) as zf:
        assert zf.testzip() is None
        return zf.namelist()


def test_zip_name_and_single_top_level_folder(plugin_zip, names):
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    assert plugin_zip.name == f"satsynth_qgis-{meta['general']['version']}.zip"
    assert plugin_zip.parent.name.startswith("dist")
    assert {n.split("/")[0] for n in names} == {"satsynth_qgis"}
    assert "satsynth_qgis/__init__.py" in names


def test_metadata_has_every_required_field_and_its_icon(plugin_zip, names):
    with zipfile.ZipFile(plugin_zip) as zf:
        text = zf.read("satsynth_qgis/metadata.txt").decode("utf-8")
        assert text == (REPO / "metadata.txt").read_text(encoding="utf-8")
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(text)
        general = meta["general"]
        missing = [f for f in REQUIRED_FIELDS if not general.get(f, "").strip()]
        assert missing == []
        assert general["qgisMinimumVersion"] == "3.22"
        assert general["hasProcessingProvider"] == "yes"
        icon = f"satsynth_qgis/{general['icon']}"
        assert icon in names and zf.read(icon).lstrip().startswith((b"<svg", b"<?xml"))


def test_licence_is_present(plugin_zip, names):
    assert "satsynth_qgis/LICENSE" in names
    with zipfile.ZipFile(plugin_zip) as zf:
        assert b"GNU GENERAL PUBLIC LICENSE" in zf.read("satsynth_qgis/LICENSE")


def test_no_compiled_binary_cache_test_or_data_files(plugin_zip, names):
    files = [n for n in names if not n.endswith("/")]
    bad = [n for n in files if n.lower().endswith(FORBIDDEN_SUFFIXES)
           or "__pycache__" in n or "/tests/" in n or "/." in n or n.split("/")[-1].startswith("test_")
           or ".egg-info" in n or ".partial" in n]
    assert bad == []
    with zipfile.ZipFile(plugin_zip) as zf:
        binary = [n for n in files if not n.lower().endswith(IMAGE_SUFFIXES)
                  and b"\x00" in zf.read(n)]
        executable = [i.filename for i in zf.infolist()
                      if not i.is_dir() and (i.external_attr >> 16) & 0o111]
    assert binary == []
    assert executable == []


def test_size_under_the_repository_limit(plugin_zip):
    assert plugin_zip.stat().st_size < 25 * 1024 * 1024


def test_it_carries_the_styles_models_icons_and_the_engine_source(names):
    assert any(n.startswith("satsynth_qgis/icons/") and n.endswith(".svg") for n in names)
    for style in sorted((REPO / "resources" / "styles").glob("*.qml")):
        assert f"satsynth_qgis/styles/{style.name}" in names
    for model in sorted((REPO / "resources" / "models").glob("*.model3")):
        assert f"satsynth_qgis/models/{model.name}" in names
    # what "Set up engine" installs from
    for needed in ("pyproject.toml", "README.md", "LICENSE", "engine/satsynth/__init__.py",
                   "engine/satsynth/cli.py", "engine/satsynth/__main__.py"):
        assert f"satsynth_qgis/engine_src/{needed}" in names
    engine_py = {p.relative_to(REPO).as_posix() for p in (REPO / "engine" / "satsynth").rglob("*.py")}
    packed = {n[len("satsynth_qgis/engine_src/"):] for n in names
              if n.startswith("satsynth_qgis/engine_src/engine/")}
    assert engine_py <= packed
    # the plugin's own code, without the developer checkout around it
    assert "satsynth_qgis/dock/panel.py" in names and "satsynth_qgis/setup_engine.py" in names
    assert not any(n.startswith("satsynth_qgis/engine_src/tests") for n in names)


def test_the_carried_engine_source_builds_a_wheel(plugin_zip, tmp_path):
    """pip can build the engine from what the zip carries (what "Set up engine" installs)."""
    import os
    import shutil
    import subprocess

    engine_py = os.environ.get("SATSYNTH_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(engine_py).exists():
        pytest.skip("engine Python absent (set SATSYNTH_PYTHON)")
    unpacked = tmp_path / "unpacked plugin"
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(unpacked)
    src = unpacked / "satsynth_qgis" / "engine_src"
    build = tmp_path / "build"
    shutil.copytree(src, build / "src")  # as the set-up does: never build inside the plugin
    res = subprocess.run([engine_py, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(build / "wheels"), str(build / "src")],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    wheels = list((build / "wheels").glob("satsynth-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:
        assert {"satsynth/cli.py", "satsynth/__main__.py"} <= set(whl.namelist())
    assert not (src / "build").exists()


def test_the_packaged_plugin_loads_the_engine_contract_from_its_own_copy(plugin_zip, tmp_path):
    """The zip carries engine/satsynth/contract.py and the plugin's loader finds it there, with
    no checkout around the plugin (a fresh Python, the unpacked zip alone on sys.path)."""
    import subprocess
    import sys

    unpacked = tmp_path / "plugins"
    with zipfile.ZipFile(plugin_zip) as zf:
        assert "satsynth_qgis/engine_src/engine/satsynth/contract.py" in zf.namelist()
        assert "satsynth_qgis/contract.py" in zf.namelist()
        zf.extractall(unpacked)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "import satsynth_qgis.contract as c; "
             "print(c.contract_path()); print(','.join(c.contract.ARCHITECTURES)); "
             "print('satsynth' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe, str(unpacked)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    path, archs, engine_imported = res.stdout.splitlines()
    expected = unpacked / "satsynth_qgis" / "engine_src" / "engine" / "satsynth" / "contract.py"
    assert Path(path) == expected.resolve()
    assert archs.split(",") == list(_contract().ARCHITECTURES)
    assert engine_imported == "False"


def test_the_contract_loader_says_what_is_missing(tmp_path):
    from satsynth_qgis.contract import contract_path

    with pytest.raises(ImportError, match="contract.py was not found"):
        contract_path((tmp_path / "a" / "contract.py", tmp_path / "b" / "contract.py"))


def _contract():
    from satsynth_qgis.contract import contract

    return contract
