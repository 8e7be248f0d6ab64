"""The dock's Export ONNX button (segmenter stage): enabled with a segmenter, and the parameters
it sends are ones 'Export segmenter to ONNX' accepts."""

from __future__ import annotations

import json

from qgis.core import QgsApplication, QgsProcessingContext
from test_dock import dock, scene  # noqa: F401 - fixtures

from satsynth_qgis.dock import params


def test_export_button_needs_a_segmenter_and_sends_valid_parameters(dock, tmp_path,  # noqa: F811
                                                                    provider):
    assert dock.buttons["export"].objectName() == "stage_export"
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    assert "trained segmenter" in dock.stage_ready()["export"]
    seg = tmp_path / "my segmenter"
    seg.mkdir()
    (seg / "config.json").write_text(json.dumps({"kind": "segmenter", "in_channels": 3}))
    dock.segmenter_widget.setFilePath(str(seg))
    assert dock.stage_ready()["export"] == ""
    alg_id, parameters = params.build("export", dock.inputs())
    assert alg_id == "satsynth:export_segmenter"
    assert parameters["MODEL"] == str(seg)
    assert parameters["OUTPUT"] == str(tmp_path / "my segmenter.onnx")
    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    declared = {p.name() for p in alg.parameterDefinitions()}
    assert set(parameters) <= declared
    ok, message = alg.checkParameterValues(parameters, QgsProcessingContext())
    assert ok, message
