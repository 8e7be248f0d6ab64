"""Choices (enum parameters) by number, as ``qgis_process help`` documents them."""

from __future__ import annotations

from conftest import ensure_provider
from qgis.core import QgsApplication, QgsProcessingContext


def _choices():
    ensure_provider()
    for alg in QgsApplication.processingRegistry().providerById("satsynth").algorithms():
        alg = QgsApplication.processingRegistry().createAlgorithmById(alg.id())
        for param in alg.parameterDefinitions():
            if param.type() == "enum":
                yield alg, param


def test_every_choice_takes_its_number_as_well_as_its_text():
    seen = 0
    for alg, param in _choices():
        assert param.usesStaticStrings(), (alg.id(), param.name())
        options = list(param.options())
        for i, text in enumerate(options):
            for given in (i, str(i), text):
                fixed = alg.enum_texts({param.name(): given})
                assert fixed[param.name()] == text, (alg.id(), param.name(), given)
                value = alg.enum_value({param.name(): given}, param.name(),
                                       QgsProcessingContext())
                assert value == text, (alg.id(), param.name(), given, value)
        # a number out of range is left for Processing to refuse
        assert alg.enum_texts({param.name(): len(options)})[param.name()] == len(options)
        seen += 1
    assert seen > 10


def test_a_choice_by_number_passes_processings_check(tmp_path, scene):
    ensure_provider()
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:segment_raster")
    params = {"MODEL": str(tmp_path), "INPUT": scene["image"], "DEVICE": "1", "RUNTIME": 2,
              "OUTPUT": str(tmp_path / "p.tif")}
    ok, msg = alg.checkParameterValues(params, QgsProcessingContext())
    assert "DEVICE" not in msg and "RUNTIME" not in msg, msg
    params["DEVICE"] = "9"
    ok, msg = alg.checkParameterValues(params, QgsProcessingContext())
    assert not ok and "DEVICE" in msg
