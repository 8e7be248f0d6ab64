"""The dock's Upsampler setting reaches Synthesize and the experiment (the super-resolution
cascade)."""

from __future__ import annotations

import json

from dock_fixtures import choose_polygons
from qgis.core import QgsApplication, QgsProcessingContext
from test_dock import dock, scene  # noqa: F401 - fixtures

from satsynth_qgis.dock import params


def test_the_upsampler_folder_is_sent_to_synthesize_only_when_chosen(dock, scene, tmp_path,  # noqa: F811
                                                                     provider):
    dock.image_combo.setLayer(scene["image"])
    choose_polygons(dock, scene)
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    run = tmp_path / "runs" / "satsynth run"
    (run / "generator").mkdir(parents=True)
    (run / "generator" / "config.json").write_text(json.dumps({"kind": "generator"}))
    up = tmp_path / "my upsampler"
    up.mkdir()
    (up / "config.json").write_text(json.dumps({"kind": "upsampler"}))
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:synthesize")

    _, parameters = params.build("synthesize", dock.inputs())
    assert "UPSAMPLER" not in parameters
    dock.adv["upsampler"].setFilePath(str(up))
    _, parameters = params.build("synthesize", dock.inputs())
    assert parameters["UPSAMPLER"] == str(up)
    ok, message = alg.checkParameterValues(parameters, QgsProcessingContext())
    assert ok, message
    # the experiment judges the same cascade: its pool is made through the upsampler
    _, parameters = params.build("experiment", dock.inputs())
    assert parameters["GENERATOR"] == str(run / "generator")
    assert parameters["UPSAMPLER"] == str(up)
    # remembered with the other advanced settings
    settings = dock.stage_settings()
    assert settings.upsampler == str(up)
    dock.adv["upsampler"].setFilePath("")
    dock.set_stage_settings(settings)
    assert dock.adv["upsampler"].filePath() == str(up)
