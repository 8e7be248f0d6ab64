"""The super-resolution cascade through Processing: Train upsampler, Train joint generator at a
lower chip size, and Synthesize with an upsampler folder, with the real engine."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import EPSG, run_alg
from qgis.core import QgsApplication, QgsProcessingContext, QgsRasterLayer


def test_cascade_trains_and_synthesizes_pairs_at_the_upsamplers_size(dataset, generator,
                                                                      provider, tmp_path):
    up, fb = run_alg("satsynth:train_upsampler", {
        "DATASET": dataset["DATASET"], "BASE_SIZE": 16, "FACTOR": "2", "PRESET": "tiny",
        "STEPS": 2, "BATCH_SIZE": 4, "DEVICE": "cpu", "OUTPUT": str(tmp_path / "sr")})
    cfg = json.loads((Path(up["UPSAMPLER"]) / "config.json").read_text())
    assert (cfg["kind"], cfg["base_size"], cfg["chip_size"], cfg["step"]) == \
        ("upsampler", 16, 32, 2), fb.everything()
    assert up["STEPS_DONE"] == 2 and Path(up["LOSS_PLOT"]).is_file()
    base, _ = run_alg("satsynth:train_generator", {
        "DATASET": dataset["DATASET"], "PRESET": "tiny", "STEPS": 1, "BATCH_SIZE": 4,
        "SIZE": 16, "DEVICE": "cpu", "OUTPUT": str(tmp_path / "base")})
    assert json.loads((Path(base["GENERATOR"]) / "config.json").read_text())["chip_size"] == 16
    syn, fb = run_alg("satsynth:synthesize", {
        "GENERATOR": base["GENERATOR"], "UPSAMPLER": up["UPSAMPLER"], "COUNT": 2, "STEPS": 2,
        "DEVICE": "cpu", "OUTPUT": str(tmp_path / "syn")})
    report = json.loads(Path(syn["REPORT"]).read_text())
    assert report["chip_size"] == 32 and report["upsampler"]["base_size"] == 16, fb.everything()
    layer = QgsRasterLayer(syn["IMAGES"], "images")
    assert layer.isValid() and layer.crs().authid() == f"EPSG:{EPSG}"
    chip = QgsRasterLayer(str(Path(syn["SYNTHETIC"]) / "labels" / "syn_00000.tif"), "chip")
    assert (chip.width(), chip.height()) == (32, 32)
    # a generator folder given as the upsampler is refused before the engine starts
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:synthesize")
    ok, msg = alg.checkParameterValues({"GENERATOR": base["GENERATOR"],
                                        "UPSAMPLER": generator[0]["GENERATOR"], "COUNT": 1,
                                        "OUTPUT": str(tmp_path / "x")}, QgsProcessingContext())
    assert not ok and "not an upsampler folder made by 'Train upsampler'" in msg, msg
