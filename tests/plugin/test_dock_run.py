"""Stages run from the dock through the provider's algorithms and the real engine (tiny sizes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from dock_fixtures import load_scene, make_tiny_segmenter, wait_until
from qgis.core import QgsApplication, QgsPalettedRasterRenderer, QgsProject, QgsSettings

from satsynth_qgis.dock.panel import SatSynthDock


@pytest.fixture
def project():
    project = QgsProject.instance()
    project.clear()
    QgsSettings().remove("SatSynth/dock")
    yield project
    project.clear()


@pytest.fixture
def dock(project, provider, engine_python, tmp_path):
    d = SatSynthDock(None, project=project)
    # the dock checks the engine when it opens: let that finish first
    assert wait_until(lambda: not d.stage_runner.is_running(), timeout=120)
    yield d
    d.shutdown()
    wait_until(lambda: not d.stage_runner.is_running(), timeout=30)


def _need(algorithm_id: str) -> None:
    if QgsApplication.processingRegistry().algorithmById(algorithm_id) is None:
        pytest.skip(f"{algorithm_id} has not landed in the provider yet")


def _finished(d: SatSynthDock, timeout: float) -> list:
    done: list = []
    d.stage_runner.finished.connect(lambda *args: done.append(args))
    assert wait_until(lambda: done, timeout=timeout), d.log.toPlainText()[-3000:]
    return done[0]


def test_engine_status_line_reports_version_and_device(dock):
    text = dock.engine_label.text()
    assert "Engine: found" in text and "SatSynth 0.1" in text and "CPU" in text, text
    assert dock.engine_info["DEVICE"] == "cpu"


def test_prepare_from_the_dock_writes_the_dataset_and_loads_chips_in_the_run_group(
        dock, project, tmp_path):
    _need("satsynth:prepare_chips")
    scene = load_scene(tmp_path, project)
    dock.image_combo.setLayer(scene["image"])
    dock.labels_vector_radio.setChecked(True)
    dock.label_vector_combo.setLayer(scene["polygons"])
    dock.field_combo.setField("landcover")
    dock.class_table.table.item(3, 1).setText("water")  # the user's edits go to the engine
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    dock.run_name_edit.setText("prepare run")
    dock.adv["chip_size"].setValue(32)
    dock.adv["stride"].setValue(32)
    assert not dock.buttons["train_generator"].isEnabled()
    assert dock.run_stage("prepare") == ""
    assert all(not b.isEnabled() for b in dock.buttons.values())  # one stage at a time
    ok, alg, results, error, layer_ids = _finished(dock, timeout=180)
    assert ok, error + dock.log.toPlainText()[-3000:]
    run = tmp_path / "runs" / "prepare run"
    meta = json.loads((run / "dataset" / "dataset.json").read_text())
    assert "building" in json.dumps(meta)
    group = project.layerTreeRoot().findGroup("prepare run")
    assert group is not None and layer_ids
    in_group = [n.layer().id() for n in group.findLayers()]
    assert set(layer_ids) <= set(in_group)
    assert any(project.mapLayer(i).source().split("|")[0].endswith("chips.gpkg") for i in in_group)
    record = json.loads((run / "run.json").read_text())
    stage = record["stages"]["prepare"]
    assert stage["ok"] and stage["algorithm"] == "satsynth:prepare_chips"
    assert stage["parameters"]["CHIP_SIZE"] == 32
    assert stage["parameters"]["CLASS_FIELD"] == "landcover"
    assert json.loads((run / "classes.json").read_text())["classes"][0]["name"] == "background"
    # the next stages are now possible
    assert dock.buttons["train_generator"].isEnabled()
    assert dock.buttons["train_segmenter"].isEnabled()
    assert dock.progress_bar.value() == 1000


def test_segment_from_the_dock_adds_a_styled_layer_in_the_run_group(
        dock, project, tmp_path, engine_python):
    _need("satsynth:segment_raster")
    scene = load_scene(tmp_path, project)
    model = make_tiny_segmenter(engine_python, tmp_path / "tiny segmenter")
    dock.segment_combo.setLayer(scene["image"])
    dock.segmenter_widget.setFilePath(str(model))
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    dock.run_name_edit.setText("segment run")
    dock.adv["tile"].setValue(64)
    dock.adv["overlap"].setValue(16)
    assert dock.buttons["segment"].isEnabled(), dock.buttons["segment"].toolTip()
    assert dock.run_stage("segment") == ""
    ok, alg, results, error, layer_ids = _finished(dock, timeout=180)
    assert ok, error + dock.log.toPlainText()[-3000:]
    group = project.layerTreeRoot().findGroup("segment run")
    assert group is not None
    layers = [n.layer() for n in group.findLayers()]
    preds = [lyr for lyr in layers if lyr.source().endswith("scene image_classes.tif")]
    assert len(preds) == 1, [lyr.source() for lyr in layers]
    pred = preds[0]
    assert pred.crs().authid() == "EPSG:32633"
    renderer = pred.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert {c.label for c in renderer.classes()} == {"water", "field", "building"}
    assert {c.color.name() for c in renderer.classes()} == {"#1f78b4", "#b2df8a", "#e31a1c"}
    # running it again replaces the layer instead of stacking a copy
    assert dock.run_stage("segment") == ""
    ok, *_ = _finished(dock, timeout=180)
    assert ok
    again = [n.layer() for n in group.findLayers()
             if n.layer().source().endswith("scene image_classes.tif")]
    assert len(again) == 1


def _engine_children() -> list[int]:
    """Processes of ours that run the engine (``-m satsynth``)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"satsynth" in b" ".join(cmd) and b"-m" in cmd and int(stat[1]) == me:
            found.append(int(entry.name))
    return found


def test_cancel_during_training_stops_the_engine_process(dock, project, tmp_path, engine_python):
    _need("satsynth:train_segmenter")
    # a prepared dataset, made by the engine directly (the dock's Prepare is tested above)
    scene = load_scene(tmp_path, project)
    run = tmp_path / "runs" / "cancel run"
    import subprocess

    res = subprocess.run([engine_python, "-m", "satsynth", "prepare", "--image",
                          scene["image"].source(), "--labels", scene["labels"].source(),
                          "--out", str(run / "dataset"), "--chip-size", "32",
                          "--progress", "quiet"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    dock.run_name_edit.setText("cancel run")
    dock.adv["epochs"].setValue(10000)  # would run for hours
    dock.adv["arch"].setCurrentText("tiny")
    dock.adv["encoder"].setCurrentText("w16d2")
    assert dock.buttons["train_segmenter"].isEnabled()
    done: list = []
    dock.stage_runner.finished.connect(lambda *args: done.append(args))
    assert dock.run_stage("train_segmenter") == ""
    # wait until the engine really trains (progress arrives), then press Cancel
    assert wait_until(lambda: _engine_children() and dock.progress_bar.value() > 0
                      or done, timeout=180), dock.log.toPlainText()[-3000:]
    assert not done, done
    pids = _engine_children()
    assert pids
    assert dock.cancel_button.isEnabled()
    dock.cancel_button.click()
    start = time.monotonic()
    assert wait_until(lambda: done, timeout=30)
    ok, alg, results, error, layer_ids = done[0]
    assert not ok and error == "cancelled"
    assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=10)
    assert time.monotonic() - start < 15
    assert not (run / "segmenter" / "config.json").exists()  # no half-written model
    assert dock.buttons["train_segmenter"].isEnabled()  # ready for another go
    assert "cancelled" in dock.stage_label.text()
