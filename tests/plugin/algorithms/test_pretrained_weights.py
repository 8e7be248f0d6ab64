"""The encoder's starting weights from QGIS: Train segmenter, Does synthetic data help? and the
dock offer none / ImageNet / TorchGeo weights / a file, and Set up engine fetches the chosen
weights into their cache (``satsynth fetch-weights``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import flag_value, run_alg
from qgis.core import QgsProcessingException

from satsynth_qgis import setup_engine
from satsynth_qgis.setup_engine import PythonInfo

REPO = Path(__file__).resolve().parents[3]
FMOW = "ResNet50_Weights.FMOW_RGB_GASSL"


@pytest.mark.parametrize("alg", ["satsynth:train_segmenter", "satsynth:run_experiment"])
def test_the_pretrained_choice_reaches_the_engine(engine_args, dataset, tmp_path, alg):
    base = {"DATASET": dataset["DATASET"], "RATIOS": "0"}
    run_alg(alg, {**base, "OUTPUT": str(tmp_path / "a")})
    run_alg(alg, {**base, "PRETRAINED": "imagenet", "OUTPUT": str(tmp_path / "b")})
    run_alg(alg, {**base, "PRETRAINED": "torchgeo", "TORCHGEO_WEIGHTS": FMOW,
                  "ENCODER": "resnet50", "OUTPUT": str(tmp_path / "c")})
    weights = tmp_path / "enc weights.safetensors"
    weights.write_bytes(b"not read here")
    run_alg(alg, {**base, "ENCODER_WEIGHTS": str(weights), "OUTPUT": str(tmp_path / "d")})
    none, imagenet, torchgeo, local = engine_args
    assert "--encoder-weights" not in none
    assert flag_value(imagenet, "--encoder-weights") == "imagenet"
    assert flag_value(torchgeo, "--encoder-weights") == f"torchgeo:{FMOW}"
    assert flag_value(torchgeo, "--encoder") == "resnet50"
    assert flag_value(local, "--encoder-weights") == str(weights)


@pytest.mark.parametrize("params, words", [
    ({"PRETRAINED": "torchgeo"}, "give the weights' name"),
    ({"PRETRAINED": "imagenet", "ENCODER_WEIGHTS": "w.safetensors"}, "not both"),
])
def test_a_wrong_pretrained_choice_is_refused_before_starting(engine_args, dataset, tmp_path,
                                                              params, words):
    if "ENCODER_WEIGHTS" in params:
        (tmp_path / "w.safetensors").write_bytes(b"not read here")
        params = {**params, "ENCODER_WEIGHTS": str(tmp_path / "w.safetensors")}
    for alg in ("satsynth:train_segmenter", "satsynth:run_experiment"):
        with pytest.raises(QgsProcessingException, match=words):
            run_alg(alg, {"DATASET": dataset["DATASET"], "RATIOS": "0", **params,
                          "OUTPUT": str(tmp_path / "x")})
    assert engine_args == []


def test_the_dock_sends_its_pretrained_choice_and_the_paper_preset_starts_from_imagenet(
        tmp_path):
    from qgis.core import QgsProject

    from satsynth_qgis.dock import params
    from satsynth_qgis.dock.panel import SatSynthDock
    from satsynth_qgis.dock.setup_dialog import SetupEngineDialog

    dock = SatSynthDock(None, project=QgsProject.instance(), check_engine=False)
    try:
        dock.output_widget.setFilePath(str(tmp_path / "runs"))
        dock.preset_combo.setCurrentText("Quick on CPU")
        seg = params.train_segmenter(dock.inputs())
        assert "PRETRAINED" not in seg and "ENCODER_WEIGHTS" not in seg
        dock.preset_combo.setCurrentText("Paper-scale on GPU")  # as the paper's segmenters
        assert params.train_segmenter(dock.inputs())["PRETRAINED"] == "imagenet"
        assert params.experiment(dock.inputs())["PRETRAINED"] == "imagenet"
        assert SetupEngineDialog(dock).weights_edit.text() == "imagenet resnet50"
        dock.adv["pretrained"].setCurrentText("torchgeo")
        dock.adv["torchgeo_weights"].setText("ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS")
        seg = params.train_segmenter(dock.inputs())
        assert (seg["PRETRAINED"], seg["TORCHGEO_WEIGHTS"]) == (
            "torchgeo", "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS")
        assert dock.stage_settings().pretrained == "torchgeo"
        assert SetupEngineDialog(dock).weights_edit.text() == (
            "torchgeo:ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS resnet50")
        dock.adv["encoder_weights"].setFilePath(str(tmp_path / "w.pth"))  # a file wins
        seg = params.train_segmenter(dock.inputs())
        assert seg["ENCODER_WEIGHTS"] == str(tmp_path / "w.pth") and "PRETRAINED" not in seg
    finally:
        dock.shutdown()


def test_set_up_engine_fetches_the_chosen_weights_last_with_the_torchgeo_extra(tmp_path):
    from satsynth_qgis.dock.setup_dialog import parse_weights

    assert parse_weights("imagenet resnet34, torchgeo:X resnet50 ,") == [
        ("imagenet", "resnet34"), ("torchgeo:X", "resnet50")]
    assert parse_weights("imagenet") == [("imagenet", "resnet18")] and parse_weights(" ") == []
    venv = tmp_path / "env"
    py = PythonInfo("/usr/bin/python3", (3, 11, 2))
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=py, gpu=None,
                                   platform="linux", build_dir=tmp_path / "b", environ={},
                                   weights=parse_weights(f"imagenet, torchgeo:{FMOW} resnet50"))
    names = [s.name for s in plan.steps]
    assert names[-3:] == ["put the environment in place",
                          "fetch encoder weights imagenet (resnet18)",
                          f"fetch encoder weights torchgeo:{FMOW} (resnet50)"]
    final = str(venv / "bin" / "python")  # the environment in place
    assert plan.steps[-1].argv == [final, "-m", "satsynth", "fetch-weights", f"torchgeo:{FMOW}",
                                   "--encoder", "resnet50", "--progress", "json"]
    engine = next(s for s in plan.steps if s.name == "install the SatSynth engine")
    assert engine.argv[-1] == str(tmp_path / "b" / "satsynth-src") + "[torchgeo]"
    plain = setup_engine.build_plan(venv, engine_src=REPO, python=py, gpu=None,
                                    platform="linux", build_dir=tmp_path / "b", environ={},
                                    weights=[("imagenet", "resnet18")])
    engine = next(s for s in plain.steps if s.name == "install the SatSynth engine")
    assert engine.argv[-1] == str(tmp_path / "b" / "satsynth-src")
