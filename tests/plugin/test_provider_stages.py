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


@pytest.fixture(scope="session")
def dataset(scene, engine_python, tmp_path_factory):
    """The scene prepared into 32 px chips (the dataset folder and the run's results)."""
    from conftest import ensure_provider

    ensure_provider()
    out = tmp_path_factory.mktemp("dataset") / "ds"
    results, _ = run_alg("satsynth:prepare_chips", {
        "IMAGE": scene["image"], "LABELS": scene["labels"], "CHIP_SIZE": 32,
        "VAL_FRACTION": 0.25, "OUTPUT": str(out)}, load=True)
    return results


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
