"""The whole chain as one algorithm (Run full pipeline) and as the shipped graphical model."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EPSG, REPO, RecordingFeedback, project_layer, run_alg
from qgis.core import QgsPalettedRasterRenderer, QgsProcessingModelAlgorithm

MODEL3 = REPO / "resources" / "models" / "satsynth_pipeline.model3"


def test_run_full_pipeline(scene, engine_python, provider, tmp_path):
    fb = RecordingFeedback()
    results, _ = run_alg("satsynth:run_pipeline", {
        "IMAGE": scene["image"], "LABELS": scene["labels"], "CHIP_SIZE": 32,
        "GENERATOR_STEPS": 2, "COUNT": 4, "RATIO": 1.0, "ARCH": "tiny", "ENCODER": "w8d2",
        "EPOCHS": 1, "BATCH_SIZE": 4, "SAMPLER_STEPS": 2, "TILE": 64, "OVERLAP": 16,
        "DEVICE": "cpu", "OUTPUT_FOLDER": str(tmp_path / "run")}, load=True, feedback=fb)
    root = tmp_path / "run"
    for key, sub in (("DATASET", "dataset"), ("GENERATOR", "generator"),
                     ("SYNTHETIC", "synthetic"), ("SEGMENTER", "segmenter")):
        assert Path(results[key]) == root / sub and (root / sub).is_dir(), key
    assert Path(results["REPORT_HTML"]).is_file() and 0.0 <= results["MIOU"] <= 1.0
    prediction = project_layer(results["PREDICTION"])
    assert prediction is not None and prediction.crs().authid() == f"EPSG:{EPSG}"
    assert isinstance(prediction.renderer(), QgsPalettedRasterRenderer)
    assert (prediction.width(), prediction.height()) == (128, 128)
    # the stages' own layers came along: chip footprints and the synthetic mosaics
    assert project_layer(str(root / "dataset" / "chips.gpkg")) is not None
    assert project_layer(str(root / "synthetic" / "labels.vrt")) is not None
    assert max(fb.progress_values) == pytest.approx(100.0)
    assert "Step 6/6" in fb.everything()


def test_run_full_pipeline_checks_its_label_inputs(scene, provider):
    from qgis.core import QgsApplication, QgsProcessingContext

    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:run_pipeline")
    ok, msg = alg.checkParameterValues({"IMAGE": scene["image"], "OUTPUT_FOLDER": "/tmp/x"},
                                       QgsProcessingContext())
    assert not ok and "either as a labels raster or as label polygons" in msg


def test_shipped_model_runs_end_to_end(scene, engine_python, provider, tmp_path):
    import processing

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3)), f"cannot read {MODEL3}"
    ids = [c.algorithmId() for c in model.childAlgorithms().values()]
    assert sorted(ids) == sorted(["satsynth:prepare_chips", "satsynth:train_generator",
                                  "satsynth:synthesize", "satsynth:train_segmenter",
                                  "satsynth:segment_raster"])
    output = [p.name() for p in model.destinationParameterDefinitions()]
    assert len(output) == 1
    prediction = tmp_path / "model_prediction.tif"
    results = processing.run(model, {
        "image": scene["image"], "labels": scene["labels"], "chip_size": 32,
        "generator_steps": 2, "count": 4, "ratio": 1.0, "arch": "tiny", "encoder": "w8d2",
        "epochs": 1, "device": "cpu", "batch_size": 4, output[0]: str(prediction)},
        feedback=RecordingFeedback())
    assert Path(results[output[0]]) == prediction and prediction.is_file()
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(prediction), "p")
    assert layer.isValid() and layer.crs().authid() == f"EPSG:{EPSG}"
