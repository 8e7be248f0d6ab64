"""Stages run from the dock through the provider's algorithms and the real engine (tiny sizes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import make_tiny_segmenter
from dock_fixtures import CLASS_TABLE, choose_polygons, load_scene, wait_until
from qgis.core import QgsApplication, QgsPalettedRasterRenderer

from satsynth_qgis.dock.panel import SatSynthDock


@pytest.fixture
def dock(project, provider, engine_python, tmp_path):
    d = SatSynthDock(None, project=project, check_engine=False)
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


def test_engine_status_line_reports_version_and_device(project, provider, engine_python):
    dock = SatSynthDock(None, project=project)  # checks the engine when it opens
    assert wait_until(lambda: dock.engine_label.text().startswith("Engine: found"), timeout=10)
    assert not dock.check_button.isEnabled()  # while the check runs
    assert wait_until(lambda: not dock.stage_runner.is_running(), timeout=120)
    text = dock.engine_label.text()
    assert "Engine: found" in text and "SatSynth 0.1" in text and "CPU" in text, text
    assert dock.engine_info["DEVICE"] == "cpu"
    dock.shutdown()


def test_engine_status_line_links_to_the_set_up_when_the_engine_is_missing(
        project, provider, monkeypatch, tmp_path):
    from satsynth_qgis import runner

    monkeypatch.setattr(runner, "_candidates", lambda: [("setting 'Engine Python'", "(not set)",
                                                         None)])
    dock = SatSynthDock(None, project=project)
    assert wait_until(lambda: "not found" in dock.engine_label.text(), timeout=10)
    assert "href='setup'" in dock.engine_label.text()
    assert not dock.stage_runner.is_running()
    dock.shutdown()


def test_prepare_from_the_dock_writes_the_dataset_and_loads_chips_in_the_run_group(
        dock, project, tmp_path):
    _need("satsynth:prepare_chips")
    scene = load_scene(tmp_path, project)
    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    dock.class_table.table.item(1, 1).setText("Building")  # names match case-insensitively
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
    # the class table as edited in the dock is what the engine used
    assert [c["name"] for c in meta["classes"]["classes"]] == ["background", "Building", "field",
                                                               "water"]
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


def test_an_engine_failure_shows_the_engines_message_in_the_dock(dock, project, tmp_path):
    _need("satsynth:prepare_chips")
    scene = load_scene(tmp_path, project)
    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    dock.class_table.table.item(3, 1).setText("lake")  # the field says "water"
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    dock.run_name_edit.setText("failing run")
    dock.adv["chip_size"].setValue(32)
    assert dock.run_stage("prepare") == ""
    ok, alg, results, error, layer_ids = _finished(dock, timeout=180)
    assert not ok
    assert "not in the class table" in error and "water" in error, error
    assert "not in the class table" in dock.stage_label.text()
    assert not (tmp_path / "runs" / "failing run" / "dataset" / "dataset.json").exists()
    record = json.loads((tmp_path / "runs" / "failing run" / "run.json").read_text())
    assert record["stages"]["prepare"]["ok"] is False
    assert dock.buttons["prepare"].isEnabled()


def test_segment_from_the_dock_adds_a_styled_layer_in_the_run_group(
        dock, project, tmp_path, engine_python):
    _need("satsynth:segment_raster")
    scene = load_scene(tmp_path, project)
    model = make_tiny_segmenter(engine_python, tmp_path / "tiny segmenter", CLASS_TABLE,
                                chip_size=32)
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
    # confidence and class polygons come along, in the same group; polygons styled by class
    sources = [lyr.source().split("|")[0] for lyr in layers]
    assert any(src.endswith("scene image_confidence.tif") for src in sources), sources
    polygons = [lyr for lyr in layers if lyr.source().split("|")[0].endswith(
        "scene image_polygons.gpkg")]
    assert len(polygons) == 1 and polygons[0].crs().authid() == "EPSG:32633"
    assert polygons[0].renderer().type() == "categorizedSymbol"
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
    _need("satsynth:train_generator")
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
    dock.adv["generator_size"].setCurrentText("tiny")
    dock.adv["generator_steps"].setValue(1_000_000)  # would run for days
    dock.adv["batch_size"].setValue(2)
    assert dock.buttons["train_generator"].isEnabled()
    done: list = []
    stage_texts: list = []
    dock.stage_runner.finished.connect(lambda *args: done.append(args))
    dock.stage_runner.message.connect(
        lambda level, text: stage_texts.append(text) if level == "stage" else None)
    assert dock.run_stage("train_generator") == ""
    # wait until the engine really trains (its progress arrives), then press Cancel
    assert wait_until(lambda: (_engine_children() and stage_texts) or done, timeout=180), \
        dock.log.toPlainText()[-3000:]
    assert not done, done
    pids = _engine_children()
    assert pids
    assert dock.cancel_button.isEnabled()
    start = time.monotonic()
    dock.cancel_button.click()
    assert wait_until(lambda: done, timeout=30)
    ok, alg, results, error, layer_ids = done[0]
    assert not ok and error == "cancelled", error
    assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=10)
    assert time.monotonic() - start < 15
    # the generator checkpoints on SIGTERM (issue 3), atomically: either no model folder, or a
    # complete one; never a half-written one or a leftover temporary folder
    gen = run / "generator"
    if gen.exists():
        assert {"config.json", "model.safetensors", "ema.safetensors"} <= {
            p.name for p in gen.iterdir()}, sorted(p.name for p in gen.iterdir())
    assert not [p.name for p in run.iterdir() if ".partial" in p.name]
    assert dock.buttons["train_generator"].isEnabled()  # ready for another go
    assert "cancelled" in dock.stage_label.text()
    record = json.loads((run / "run.json").read_text())
    assert record["stages"]["train_generator"]["ok"] is False
