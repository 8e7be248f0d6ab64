"""Each stage end to end through processing.run, on a small scene written by the tests, with the
real engine (SATSYNTH_PYTHON). The stages share their outputs (session fixtures) to stay fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EPSG, project_layer, run_alg
from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsProcessingContext,
    QgsProcessingFeatureSourceDefinition,
    QgsProject,
    QgsVectorLayer,
)


def test_prepare_writes_a_dataset_and_loads_styled_footprints(dataset):
    folder = Path(dataset["DATASET"])
    assert (folder / "dataset.json").is_file()
    assert dataset["TRAIN_CHIPS"] + dataset["VAL_CHIPS"] == 16  # 128 px scene, 32 px chips
    assert dataset["VAL_CHIPS"] >= 1 and dataset["NUM_CLASSES"] == 3
    layer = project_layer(dataset["CHIPS"])
    assert layer is not None, "the chip footprints were not loaded"
    assert layer.crs().authid() == f"EPSG:{EPSG}"
    assert layer.featureCount() == 16
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert {c.value() for c in layer.renderer().categories()} == {"train", "val"}


def test_prepare_from_selected_label_polygons(scene, engine_python, tmp_path, provider):
    vector = QgsVectorLayer(f"{scene['vector']}|layername=labels", "labels", "ogr")
    assert vector.isValid()
    QgsProject.instance().addMapLayer(vector)
    try:
        vector.selectByExpression("\"landcover\" = 'water'")
        assert vector.selectedFeatureCount() == 1
        results, fb = run_alg("satsynth:prepare_chips", {
            "IMAGE": scene["image"],
            "VECTOR": QgsProcessingFeatureSourceDefinition(vector.id(), True),
            "CLASS_FIELD": "landcover", "CHIP_SIZE": 32, "MIN_LABELED": 0.0,
            "OUTPUT": str(tmp_path / "sel")})
        meta = json.loads((Path(results["DATASET"]) / "dataset.json").read_text())
        assert results["NUM_CLASSES"] == 2, fb.everything()  # background + water only
        names = json.dumps(meta)
        assert "water" in names and "forest" not in names
        # all features: background, forest and water
        results, _ = run_alg("satsynth:prepare_chips", {
            "IMAGE": scene["image"], "VECTOR": vector.id(), "CLASS_FIELD": "landcover",
            "CHIP_SIZE": 32, "MIN_LABELED": 0.0, "OUTPUT": str(tmp_path / "all")})
        assert results["NUM_CLASSES"] == 3
    finally:
        QgsProject.instance().removeMapLayer(vector.id())


@pytest.mark.parametrize("params, message", [
    ({}, "either as a labels raster or as label polygons"),
    ({"LABELS": "labels", "VECTOR": "vector", "CLASS_FIELD": "landcover"}, "not both"),
    ({"VECTOR": "vector"}, "need a class field"),
    ({"LABELS": "labels", "CHIP_SIZE": 256}, "larger than the image"),
    ({"LABELS": "image"}, "must have a single band"),
    ({"LABELS": "labels", "BACKGROUND": "other", "BACKGROUND_IGNORE": True}, "not both"),
], ids=["no-labels", "both", "no-field", "chip-too-big", "rgb-labels", "background"])
def test_prepare_rejects_bad_combinations(scene, provider, params, message):
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:prepare_chips")
    values = {"IMAGE": scene["image"], "OUTPUT": "/tmp/x"}
    for key, value in params.items():
        values[key] = scene.get(value, value) if isinstance(value, str) else value
    if "VECTOR" in values:
        values["VECTOR"] = f"{scene['vector']}|layername=labels"
    ok, msg = alg.checkParameterValues(values, QgsProcessingContext())
    assert not ok and message in msg, msg


def test_prepare_surfaces_the_engines_error(scene, engine_python, tmp_path, provider):
    from qgis.core import QgsProcessingException

    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"id": 0, "name": "background"},
                                               {"id": 1, "name": "water"}]}))
    with pytest.raises(QgsProcessingException) as info:
        run_alg("satsynth:prepare_chips", {
            "IMAGE": scene["image"], "LABELS": scene["labels"], "CLASSES": str(classes),
            "CHIP_SIZE": 32, "OUTPUT": str(tmp_path / "bad")})
    msg = str(info.value)
    assert msg.startswith("SatSynth prepare failed:") and "Traceback" not in msg, msg
    assert "label values not in the class table: 2" in msg
    assert not (tmp_path / "bad").exists(), "no half-written dataset"


# --- generator, synthesis, segmenter, prediction ------------------------------------------------

def test_train_generator_writes_a_model_and_reports_progress(generator):
    results, fb = generator
    assert results["STEPS_DONE"] == 2
    assert (Path(results["GENERATOR"]) / "config.json").is_file()
    assert Path(results["LOG"]).is_file() and Path(results["LOSS_PLOT"]).is_file()
    assert 100.0 in fb.progress_values
    assert any("train-generator" in t for t in fb.texts), fb.texts


def test_synthesize_loads_image_and_styled_label_mosaics(synthetic):
    from qgis.core import QgsPalettedRasterRenderer

    assert (Path(synthetic["SYNTHETIC"]) / "dataset.json").is_file()
    images = project_layer(synthetic["IMAGES"])
    labels = project_layer(synthetic["LABELS"])
    assert images is not None and labels is not None, "the mosaics were not loaded"
    assert images.crs().authid() == labels.crs().authid() == f"EPSG:{EPSG}"
    assert images.bandCount() == 3 and labels.bandCount() == 1
    assert isinstance(labels.renderer(), QgsPalettedRasterRenderer)
    assert len(labels.renderer().classes()) == 3


def test_synthesize_favors_a_class_when_asked_and_rejects_a_malformed_request(
        generator, provider, tmp_path):
    gen = generator[0]["GENERATOR"]
    config = json.loads((Path(gen) / "config.json").read_text())
    assert config["condition"] == "class-shares", "the toolbox trains conditioned generators"
    results, _ = run_alg("satsynth:synthesize", {
        "GENERATOR": gen, "COUNT": 8, "STEPS": 2, "DEVICE": "cpu", "FAVOR": " 2=4 ; 1=0.5",
        "OUTPUT": str(tmp_path / "syn")})
    report = json.loads(Path(results["REPORT"]).read_text())
    assert report["favor"] == {"2": 4.0, "1": 0.5}
    real = [c["real_share"] for c in report["classes"]]
    assert report["asked_class_shares"][2] > real[2] and report["asked_class_shares"][1] < real[1]
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:synthesize")
    ok, msg = alg.checkParameterValues({"GENERATOR": gen, "COUNT": 2, "FAVOR": "Water:3",
                                        "OUTPUT": str(tmp_path / "x")}, QgsProcessingContext())
    assert not ok and "'Water:3' is not CLASS=FACTOR" in msg, msg


def test_train_segmenter_on_real_and_synthetic(segmenter):
    assert (Path(segmenter["MODEL"]) / "model.safetensors").is_file()
    metrics = json.loads(Path(segmenter["METRICS"]).read_text())
    assert 0.0 <= segmenter["MIOU"] <= 1.0 and metrics["miou"] == pytest.approx(segmenter["MIOU"])


def test_segment_raster_over_an_extent_inside_an_aoi_with_confidence_and_polygons(
        segmenter, scene, tmp_path):
    import numpy as np
    from osgeo import gdal
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsPalettedRasterRenderer,
        QgsRasterLayer,
    )

    x0, y0 = 500000.0, 5000000.0
    # the AOI: a triangle in the extent's top-left corner, an in-memory layer in EPSG:4326
    aoi = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    square = QgsGeometry.fromWkt(f"POLYGON(({x0} {y0}, {x0 + 64} {y0}, {x0} {y0 - 64}, "
                                 f"{x0} {y0}))")
    square.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem(f"EPSG:{EPSG}"),
                                            QgsCoordinateReferenceSystem("EPSG:4326"),
                                            QgsProject.instance()))
    feat = QgsFeature()
    feat.setGeometry(square)
    aoi.dataProvider().addFeatures([feat])
    params = {
        "MODEL": segmenter["MODEL"], "INPUT": scene["image"],
        "EXTENT": f"{x0},{x0 + 96},{y0 - 64},{y0} [EPSG:{EPSG}]", "AOI": aoi,
        "TILE": 64, "OVERLAP": 16, "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "pred.tif"),
        "OUTPUT_CONFIDENCE": str(tmp_path / "conf.tif"),
        "OUTPUT_VECTOR": str(tmp_path / "pred.gpkg"),
    }
    results, _ = run_alg("satsynth:segment_raster", params, load=True)
    pred = project_layer(results["OUTPUT"])
    assert pred is not None, "the prediction was not loaded"
    assert pred.crs().authid() == f"EPSG:{EPSG}"
    ext = pred.extent()  # extent and AOI intersected, on the input's pixel grid
    assert (ext.xMinimum(), ext.yMaximum()) == (x0, y0)
    assert (pred.width(), pred.height()) == (64, 64)
    renderer = pred.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.value for c in renderer.classes()] == [0, 1, 2]
    data = gdal.Open(results["OUTPUT"]).ReadAsArray()
    inside, outside = data[2:20, 2:20], data[40:62, 40:62]
    assert np.isin(inside, [0, 1, 2]).all() and (outside == 255).all()  # nodata outside the AOI
    conf = QgsRasterLayer(results["OUTPUT_CONFIDENCE"], "conf")
    assert conf.isValid() and conf.crs().authid() == f"EPSG:{EPSG}"
    polygons = project_layer(results["OUTPUT_VECTOR"])
    assert polygons is not None and polygons.featureCount() > 0
    assert isinstance(polygons.renderer(), QgsCategorizedSymbolRenderer)


def test_segment_raster_checks(segmenter, scene, generator, provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:segment_raster")
    base = {"MODEL": segmenter["MODEL"], "INPUT": scene["image"], "OUTPUT": "/tmp/p.tif"}
    ctx = QgsProcessingContext()
    assert alg.checkParameterValues(base, ctx)[0]
    ok, msg = alg.checkParameterValues({**base, "TILE": 64, "OVERLAP": 33}, ctx)
    assert not ok and "at most half the tile" in msg  # the engine's rule (check_tiling)
    ok, msg = alg.checkParameterValues({**base, "MODEL": generator[0]["GENERATOR"]}, ctx)
    assert not ok and "is a generator folder, not a segmenter folder" in msg
    ok, msg = alg.checkParameterValues({**base, "INPUT": scene["labels"]}, ctx)
    assert not ok and "trained on 3-band images" in msg
    ok, msg = alg.checkParameterValues({**base, "EXTENT": "0,10,0,10 [EPSG:32633]"}, ctx)
    assert not ok and "does not overlap" in msg


def test_evaluate_segmenter_on_the_dataset(segmenter, dataset, tmp_path):
    results, _ = run_alg("satsynth:evaluate_segmenter", {
        "MODEL": segmenter["MODEL"], "DATASET": dataset["DATASET"], "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "report")})
    assert Path(results["REPORT_HTML"]).is_file()
    report = json.loads(Path(results["REPORT_JSON"]).read_text())
    assert report["miou"] == pytest.approx(results["MIOU"])


def test_training_is_cancelled_through_the_feedback(dataset, tmp_path, monkeypatch):
    """A long training run is cancelled once training is under way; the engine is gone in 5 s."""
    import subprocess
    import time

    from conftest import RecordingFeedback
    from qgis.core import QgsProcessingException

    from satsynth_qgis import process

    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(process.subprocess, "Popen", recording_popen)
    cancelled_at = []

    class CancelWhenTraining(RecordingFeedback):
        def setProgressText(self, text):
            super().setProgressText(text)
            if "step" in text and not cancelled_at:
                cancelled_at.append(time.monotonic())
                self.cancel()

    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run_alg("satsynth:train_generator", {
            "DATASET": dataset["DATASET"], "PRESET": "tiny", "STEPS": 100000, "BATCH_SIZE": 4,
            "DEVICE": "cpu", "OUTPUT": str(tmp_path / "gen")}, feedback=CancelWhenTraining())
    assert cancelled_at, "training never started"
    assert started and started[0].poll() is not None, "the engine is still running"
    assert time.monotonic() - cancelled_at[0] < 5.0


def test_synthesize_scores_pairs_with_a_segmenter_keeps_the_best_and_loads_their_scores(
        generator, segmenter, provider, tmp_path):
    gen = generator[0]["GENERATOR"]
    results, fb = run_alg("satsynth:synthesize", {
        "GENERATOR": gen, "COUNT": 4, "STEPS": 2, "DEVICE": "cpu",
        "SCORE_WITH": segmenter["MODEL"], "KEEP": 0.5, "OUTPUT": str(tmp_path / "best")},
        load=True)
    layer = project_layer(results["FOOTPRINTS"])
    assert layer is not None, "the pair footprints were not loaded"
    assert layer.crs().authid() == f"EPSG:{EPSG}" and layer.featureCount() == 2
    assert {"miou", "pixel_accuracy", "rank"} <= set(layer.fields().names())
    assert sorted(f["rank"] for f in layer.getFeatures()) == [1, 2]
    assert all(0.0 <= f["miou"] <= 1.0 for f in layer.getFeatures())
    assert any("Pair consistency" in t for t in fb.infos), fb.infos
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:synthesize")
    ok, msg = alg.checkParameterValues({"GENERATOR": gen, "COUNT": 2, "KEEP": 0.5,
                                        "OUTPUT": str(tmp_path / "x")}, QgsProcessingContext())
    assert not ok and "needs a segmenter" in msg, msg
