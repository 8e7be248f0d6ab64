"""The plugin and the engine's output rule: refused before the run, errors printed once."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ensure_provider, run_alg, scene_arrays
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException

from satsynth_qgis import runner


def _digest(folder: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_an_engine_error_reaches_the_log_once(tmp_path, feedback):
    """The CLI prints its error line and emits the same message as a protocol event; the event
    becomes the exception Processing shows, so the line is not relayed as well."""
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        print(json.dumps({"event": "error", "message": "lab.tif: the labels do not overlap"}),
              flush=True)
        print("satsynth: error: lab.tif: the labels do not overlap", file=sys.stderr)
        sys.exit(2)
    """), encoding="utf-8")
    engine = runner.Engine((sys.executable, str(script)), "test")
    with pytest.raises(runner.EngineError) as info:
        runner.run_engine(["prepare"], feedback, engine=engine)
    logged = feedback.everything() + "\n" + str(info.value)
    assert logged.count("the labels do not overlap") == 1


def test_output_equal_to_an_input_is_refused_before_the_run(dataset, tmp_path):
    """Train segmenter with OUTPUT = DATASET used to delete the dataset (exit 0)."""
    ensure_provider()
    folder = Path(dataset["DATASET"])
    before = _digest(folder)
    with pytest.raises(QgsProcessingException, match="also an input"):
        run_alg("satsynth:train_segmenter", {
            "DATASET": str(folder), "ARCH": "tiny", "ENCODER": "w4d1", "EPOCHS": 1,
            "DEVICE": "cpu", "OUTPUT": str(folder)})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:train_generator")
    ok, msg = alg.checkParameterValues({"DATASET": str(folder), "OUTPUT": str(mine)},
                                       QgsProcessingContext())
    assert not ok and "not a SatSynth generator folder" in msg
    ok, msg = alg.checkParameterValues({"DATASET": str(folder), "OUTPUT": str(tmp_path / "g")},
                                       QgsProcessingContext())
    assert ok, msg
    assert _digest(folder) == before and (mine / "notes.txt").read_text() == "keep"


def test_labels_drawn_on_the_image_pixels(scene, engine_python, tmp_path):
    """An annotation tool's mask: the image's size, no georeference. Refused with the hint,
    accepted with 'Labels raster drawn on the image's pixels', refused when the size differs."""
    from osgeo import gdal

    ensure_provider()
    _, labels = scene_arrays()
    for name, arr in (("mask.tif", labels), ("small.tif", labels[:100, :100])):
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / name), arr.shape[1],
                                                  arr.shape[0], 1, gdal.GDT_Byte)
        ds.GetRasterBand(1).WriteArray(arr)
        ds = None
    params = {"IMAGE": scene["image"], "LABELS": str(tmp_path / "mask.tif"), "CHIP_SIZE": 32,
              "OUTPUT": str(tmp_path / "ds")}
    with pytest.raises(QgsProcessingException, match="--labels-on-image-grid"):
        run_alg("satsynth:prepare_chips", params)
    results, _ = run_alg("satsynth:prepare_chips", {**params, "LABELS_ON_IMAGE_GRID": True})
    assert (Path(results["DATASET"]) / "dataset.json").is_file()
    with pytest.raises(QgsProcessingException, match="needs the labels to have the image's size"):
        run_alg("satsynth:prepare_chips", {**params, "LABELS": str(tmp_path / "small.tif"),
                                           "LABELS_ON_IMAGE_GRID": True,
                                           "OUTPUT": str(tmp_path / "ds2")})
