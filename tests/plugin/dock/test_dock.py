"""The dock panel with real layers in a real QgsProject (offscreen QGIS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import stub_iface
from dock_fixtures import CLASSES, choose_polygons, load_scene
from qgis.core import QgsProject, QgsSettings

from satsynth_qgis.dock.class_table import ClassRow, ClassTableError
from satsynth_qgis.dock.menu import DockMenu
from satsynth_qgis.dock.panel import SatSynthDock
from satsynth_qgis.dock.presets import PRESETS
from satsynth_qgis.dock.settings import SETTINGS_PREFIX


@pytest.fixture
def scene(tmp_path, project):
    folder = tmp_path / "data with spaces"
    folder.mkdir()
    return load_scene(folder, project)


@pytest.fixture
def dock(project):
    d = SatSynthDock(None, project=project, check_engine=False)
    yield d
    d.shutdown()
    d.deleteLater()


def test_dock_builds_with_real_layers_and_the_class_table_fills_from_the_text_field(dock, scene):
    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    assert dock.image_combo.currentLayer().id() == scene["image"].id()
    # the field combo lists the GeoPackage layer's fields
    assert dock.field_combo.currentField() == "landcover"
    rows = dock.class_table.rows()
    # the engine's from_names convention: background 0, then the names in sorted order
    assert [(r.id, r.name) for r in rows] == [(0, "background"), (1, "building"), (2, "field"),
                                              (3, "water")]
    assert len({r.color for r in rows}) == 4
    # the segment raster follows the image by default
    assert dock.segment_combo.currentLayer().id() == scene["image"].id()


def test_class_table_fills_from_a_numeric_field_and_from_a_label_raster_with_palette(dock, scene):
    choose_polygons(dock, scene, "code")
    # ids keep their values; uncovered pixels are id 0 "background", as the engine infers
    assert [(r.id, r.name) for r in dock.class_table.rows()] == [
        (0, "background"), (1, "class 1"), (2, "class 2"), (3, "class 3")]
    dock.labels_raster_radio.setChecked(True)
    dock.label_raster_combo.setLayer(scene["labels"])
    rows = dock.class_table.rows()
    # nodata (0) is not a class; the colours come from the raster's colour table
    assert [r.id for r in rows] == [1, 2, 3]
    assert [r.color for r in rows] == ["#{:02x}{:02x}{:02x}".format(*CLASSES[i][1])
                                       for i in (1, 2, 3)]


def test_class_table_is_editable_and_round_trips_through_json(dock, scene, tmp_path):
    choose_polygons(dock, scene)
    table = dock.class_table
    table.table.item(1, 1).setText("roof")
    table.set_color(1, "#123456")
    path = table.export_json(tmp_path / "classes.json")
    data = json.loads(path.read_text())
    assert data["classes"][1] == {"id": 1, "name": "roof", "color": "#123456"}
    table.set_rows([])
    table.import_json(path)
    assert table.rows()[1] == ClassRow(1, "roof", "#123456")
    # what the engine would refuse is refused with the reason
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}))
    with pytest.raises(ClassTableError, match=r"class ids must be unique, got \[1, 1\]"):
        table.import_json(bad)
    table.table.item(0, 0).setData(0, 300)
    assert not table.is_valid()


def test_stage_buttons_follow_the_inputs_and_the_run_folder(dock, scene, tmp_path):
    enabled = lambda: {s for s, b in dock.buttons.items() if b.isEnabled()}  # noqa: E731
    assert enabled() == set()
    assert "needs an image layer" in dock.buttons["prepare"].toolTip()

    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    assert enabled() == set()  # no output folder yet
    out = tmp_path / "runs folder"
    dock.output_widget.setFilePath(str(out))
    dock.run_name_edit.setText("my run")
    assert enabled() == {"prepare", "run_all"}

    run = out / "my run"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / "dataset.json").write_text('{"format": "satsynth-chips"}')
    dock.update_state()
    # the experiment's default ratios (0,0.5,1) need a generator; ratios 0 alone do not
    assert enabled() == {"prepare", "run_all", "train_generator", "train_segmenter"}
    assert "needs a trained generator" in dock.buttons["experiment"].toolTip()
    dock.adv["experiment_ratios"].setText("0")
    assert "experiment" in enabled()
    dock.adv["experiment_ratios"].setText("0,one")
    assert "needs experiment ratios like 0,1,2" in dock.buttons["experiment"].toolTip()
    dock.adv["experiment_ratios"].setText("0,0.5,1")
    (run / "generator").mkdir()
    (run / "generator" / "config.json").write_text("{}")
    (run / "segmenter").mkdir()
    (run / "segmenter" / "config.json").write_text("{}")
    dock.update_state()
    assert enabled() == set(dock.buttons)

    # Segment over an AOI needs the AOI layer
    dock.extent_combo.setCurrentIndex(dock.extent_combo.findData("aoi"))
    assert "segment" not in enabled()
    assert "AOI" in dock.buttons["segment"].toolTip()
    dock.aoi_combo.setLayer(scene["polygons"])
    assert "segment" in enabled()
    # removing the class table's content disables the stages that need classes
    dock.class_table.set_rows([])
    assert {"prepare", "run_all"}.isdisjoint(enabled())
    # removing the rasters from the project disables what needs them
    dock.class_table.set_rows([ClassRow(1, "a", "#ff0000")])
    assert {"prepare", "run_all"} <= enabled()
    QgsProject.instance().removeMapLayers([scene["image"].id(), scene["labels"].id()])
    assert dock.image_combo.currentLayer() is None
    assert {"prepare", "run_all", "segment"}.isdisjoint(enabled())
    # with polygon labels, Evaluate uses the run's validation chips: no image needed
    assert "evaluate" in enabled()


def test_presets_fill_the_advanced_section_and_settings_are_remembered(project, scene, tmp_path):
    d = SatSynthDock(None, project=project, check_engine=False)
    d.preset_combo.setCurrentText("Standard")
    assert d.stage_settings() == PRESETS["Standard"]
    d.adv["epochs"].setValue(7)
    d.adv["chip_size"].setValue(32)  # the stride follows: the engine needs stride <= chip size
    assert d.adv["stride"].value() == 32
    d.adv["chip_size"].setValue(128)
    d.output_widget.setFilePath(str(tmp_path))
    d.run_name_edit.setText("remembered")
    d.shutdown()
    assert QgsSettings().value(SETTINGS_PREFIX + "run_name") == "remembered"
    again = SatSynthDock(None, project=project, check_engine=False)
    assert again.preset_combo.currentText() == "Standard"
    assert again.stage_settings().epochs == 7
    assert again.stage_settings().chip_size == 128
    assert again.output_widget.filePath() == str(tmp_path)
    assert again.run_name_edit.text() == "remembered"
    again.shutdown()


def test_a_stage_that_cannot_run_says_why_and_starts_nothing(dock):
    assert "needs" in dock.run_stage("prepare")
    assert not dock.stage_runner.is_running()
    assert "Prepare: needs an image layer" in dock.log.toPlainText()


def test_menu_adds_toolbar_and_raster_menu_entries_and_removes_them():
    iface = stub_iface()
    menu = DockMenu(iface, None)
    menu.initGui()
    iface.addRasterToolBarIcon.assert_called_once_with(menu.toggle_action)
    menu_calls = [c.args for c in iface.addPluginToRasterMenu.call_args_list]
    assert ("&SatSynth", menu.toggle_action) in menu_calls
    assert ("&SatSynth", menu.setup_action) in menu_calls
    menu.toggle_action.setChecked(True)  # the toolbar button shows the dock
    assert menu.dock is not None and iface.addDockWidget.called
    dock = menu.dock
    menu.unload()
    iface.removeDockWidget.assert_called_once_with(dock)
    assert iface.removePluginRasterMenu.call_count == 2
    assert menu.dock is None


def test_run_folder_records_parameters_as_json(tmp_path, scene):
    from satsynth_qgis.dock.run_folder import RunFolder

    rf = RunFolder.of(tmp_path, "a/b: run")
    assert rf.root.name == "a_b_ run"
    rf.record_stage("prepare", "satsynth:prepare_chips",
                    {"IMAGE": scene["image"], "CHIP_SIZE": 64}, True, {"OUTPUT": "x"})
    data = json.loads(Path(rf.record).read_text())
    assert data["stages"]["prepare"]["parameters"] == {"IMAGE": scene["image"].source(),
                                                       "CHIP_SIZE": 64}
    assert data["stages"]["prepare"]["algorithm"] == "satsynth:prepare_chips"


@pytest.mark.parametrize("stage", ["prepare", "train_generator", "synthesize", "train_segmenter",
                                   "evaluate", "evaluate with a label raster", "experiment",
                                   "segment", "segment over an AOI", "run_all"])
def test_every_stage_sends_only_parameters_its_algorithm_declares(dock, scene, tmp_path, provider,
                                                                  stage):
    """The dock and the toolbox share one code path: the dock's parameters are the algorithm's."""
    from qgis.core import QgsApplication, QgsProcessingContext

    from satsynth_qgis.dock import params

    variant, stage = stage, stage.split(" ")[0]
    alg = QgsApplication.processingRegistry().createAlgorithmById(params.ALGORITHMS[stage])
    if alg is None:
        pytest.skip(f"{params.ALGORITHMS[stage]} has not landed in the provider yet")
    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    if variant == "evaluate with a label raster":
        dock.labels_raster_radio.setChecked(True)
        dock.label_raster_combo.setLayer(scene["labels"])
    if variant == "segment over an AOI":
        dock.extent_combo.setCurrentIndex(dock.extent_combo.findData("aoi"))
        dock.aoi_combo.setLayer(scene["polygons"])
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    run = tmp_path / "runs" / "satsynth run"
    # each folder carries the marker of its kind, as the engine writes it (the output checks
    # recognise an earlier output of the same kind by it)
    for sub, name, marker in (("dataset", "dataset.json", {"format": "satsynth-chips"}),
                              ("generator", "config.json", {"kind": "generator"}),
                              ("synthetic", "dataset.json", {"format": "satsynth-chips",
                                                             "synthetic": True}),
                              ("segmenter", "config.json", {"kind": "segmenter"})):
        (run / sub).mkdir(parents=True, exist_ok=True)
        (run / sub / name).write_text(json.dumps(marker))
    dock.class_table.export_json(run / "classes.json")
    stage_id, parameters = params.build(stage, dock.inputs())
    declared = {p.name() for p in alg.parameterDefinitions()}
    assert set(parameters) - declared == set()
    ok, message = alg.checkParameterValues(parameters, QgsProcessingContext())
    assert ok, message
    if variant == "evaluate with a label raster":
        assert parameters["LABELS"] is scene["labels"] and "DATASET" not in parameters
    if variant == "segment over an AOI":
        assert parameters["AOI"] is scene["polygons"]


def test_the_experiment_outcome_reads_cannot_tell_with_the_detectable_difference(tmp_path):
    """The dock states each variant's outcome in the engine's words (results.json): 'cannot
    tell' with the smallest difference the seeds could detect, never 'not significant'."""
    from satsynth_qgis.dock.params import experiment_outcome

    summary = [{"variant": "real", "ratio": 0.0, "miou_delta": 0.0},
               {"variant": "mix", "ratio": 0.5, "miou_delta": -0.011,
                "miou_delta_ci": [-0.064, 0.042], "mde": 0.0907, "seeds_for_target": 52,
                "target_difference": 0.02, "paired_seeds": [0, 1, 2], "verdict": "cannot tell"},
               {"variant": "tstr", "ratio": 1.0, "miou_delta": -0.1, "miou_delta_ci": None,
                "mde": None, "verdict": "cannot tell (1 seed)"}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"summary": summary}))
    lines = experiment_outcome({"RESULTS": str(path), "OUTPUT": str(tmp_path)})
    assert lines[0] == ("mix R=0.5: cannot tell (Δ mIoU -0.011, 95 % interval [-0.064, +0.042]);"
                        " the smallest difference these 3 seeds could detect: 0.091; 52 seeds "
                        "would detect 0.02")
    assert lines[1] == "tstr R=1: cannot tell (1 seed) (Δ mIoU -0.100)"
    assert not any("significant" in line for line in lines)
    assert experiment_outcome({"RESULTS": str(tmp_path / "missing.json")}) == []
