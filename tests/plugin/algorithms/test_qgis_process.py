"""Headless, as a user's shell script runs it: qgis_process with the plugin enabled in a profile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EPSG, REPO

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """A fresh QGIS settings folder whose default profile has the plugin installed and enabled.

    The plugin folder holds links to the checkout's modules plus metadata.txt and icons, which is
    what QGIS needs to find a plugin (the release zip has the same layout)."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process.bin absent")
    root = tmp_path_factory.mktemp("qgis-config")
    default = root / "profiles" / "default"
    plugin = default / "python" / "plugins" / "satsynth_qgis"
    plugin.mkdir(parents=True)
    for entry in (REPO / "satsynth_qgis").iterdir():
        if entry.name != "__pycache__":
            (plugin / entry.name).symlink_to(entry)
    shutil.copy(REPO / "metadata.txt", plugin / "metadata.txt")
    (plugin / "icons").symlink_to(REPO / "resources" / "icons")
    (default / "QGIS").mkdir(parents=True)
    (default / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nsatsynth_qgis=true\n")
    return root


def qgis_process(profile: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(profile), "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_qgis_process_lists_the_provider(profile):
    res = qgis_process(profile, "list")
    assert res.returncode == 0, res.stderr
    for alg in ("satsynth:check_engine", "satsynth:prepare_chips", "satsynth:segment_raster",
                "satsynth:run_pipeline"):
        assert alg in res.stdout


def test_qgis_process_segments_a_raster(profile, segmenter, scene, tmp_path, engine_python):
    out = tmp_path / "headless prediction.tif"  # a space in the path, as users have
    res = qgis_process(profile, "run", "satsynth:segment_raster", "--",
                       f"MODEL={segmenter['MODEL']}", f"INPUT={scene['image']}",
                       "TILE=64", "OVERLAP=16", "DEVICE=cpu", f"OUTPUT={out}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert out.is_file() and out.with_suffix(".qml").is_file()
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(out), "headless")
    assert layer.isValid() and layer.crs().authid() == f"EPSG:{EPSG}"
    assert (layer.width(), layer.height()) == (128, 128)


def test_qgis_process_reports_a_bad_model_folder(profile, scene, tmp_path):
    model = tmp_path / "not a model"  # an empty folder; the output lies outside it
    model.mkdir()
    res = qgis_process(profile, "run", "satsynth:segment_raster", "--",
                       f"MODEL={model}", f"INPUT={scene['image']}",
                       f"OUTPUT={tmp_path / 'p.tif'}")
    assert res.returncode != 0
    assert "is not a segmenter folder made by 'Train segmenter'" in res.stdout + res.stderr


def test_qgis_process_takes_choices_by_number_as_its_help_documents(profile, segmenter, scene,
                                                                     tmp_path, engine_python):
    """``qgis_process help`` lists each choice as '- 1: cpu' and asks for the number; the
    algorithms used to refuse it ('Incorrect parameter value for DEVICE')."""
    res = qgis_process(profile, "help", "satsynth:segment_raster")
    assert "- 1: cpu" in res.stdout and "- 1: torch" in res.stdout, res.stdout[-2000:]
    out = tmp_path / "by number.tif"
    res = qgis_process(profile, "run", "satsynth:segment_raster", "--",
                       f"MODEL={segmenter['MODEL']}", f"INPUT={scene['image']}", "TILE=64",
                       "OVERLAP=16", "DEVICE=1", "RUNTIME=1", f"OUTPUT={out}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "--device cpu --runtime torch" in res.stdout + res.stderr
    assert out.is_file()


def test_qgis_process_prints_an_engine_error_no_more_often_than_qgis_own(profile, segmenter,
                                                                         scene, tmp_path,
                                                                         engine_python):
    """qgis_process repeats an algorithm's error itself (QGIS 3.22 prints the exception of its
    own native:raiseexception three times: the message log, 'ERROR:' and the log again); the
    plugin adds no copy of the engine's message to that."""
    model = tmp_path / "diverged"
    shutil.copytree(segmenter["MODEL"], model, ignore=shutil.ignore_patterns("*.onnx"))
    subprocess.run([engine_python, "-c", (  # a NaN in the weights: the engine refuses them
        "import sys; from safetensors.torch import load_file, save_file\n"
        "s = load_file(sys.argv[1]); k = next(k for k, v in s.items() if v.is_floating_point())\n"
        "s[k] = s[k].clone(); s[k].view(-1)[0] = float('nan'); save_file(s, sys.argv[1])"),
        str(model / "model.safetensors")], check=True)
    native = qgis_process(profile, "run", "native:raiseexception", "--", "MESSAGE=qgis-own-error")
    floor = (native.stdout + native.stderr).count("qgis-own-error") - 1  # minus the inputs echo
    res = qgis_process(profile, "run", "satsynth:segment_raster", "--", f"MODEL={model}",
                       f"INPUT={scene['image']}", "DEVICE=cpu", f"OUTPUT={tmp_path / 'p.tif'}")
    assert res.returncode != 0
    assert (res.stdout + res.stderr).count("holds NaN or infinite values") == floor >= 1
    assert not (tmp_path / "p.tif").exists()
