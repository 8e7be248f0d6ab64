"""The plugin loads and unloads, the provider and its algorithms are registered and well-formed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ensure_provider, remove_provider, stub_iface
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException

import satsynth_qgis
from satsynth_qgis import runner
from satsynth_qgis.algorithms import ALGORITHMS

ALL_IDS = ["check_engine", "prepare_chips", "train_generator", "train_upsampler", "synthesize",
           "train_segmenter", "evaluate_segmenter", "run_experiment", "segment_raster",
           "export_segmenter", "run_pipeline"]


def test_plugin_loads_via_class_factory_and_unloads_cleanly():
    registry = QgsApplication.processingRegistry()
    remove_provider()  # the tests' copy: this test installs the plugin's own
    try:
        plugin = satsynth_qgis.classFactory(stub_iface())
        plugin.initGui()
        ours = registry.providerById("satsynth")
        assert ours is not None and ours.name() == "SatSynth"
        assert not ours.icon().isNull() and Path(ours.svgIconPath()).is_file()
        assert registry.algorithmById("satsynth:check_engine") is not None
        from processing.core.ProcessingConfig import ProcessingConfig

        assert runner.SETTING_NAME in ProcessingConfig.settings  # the 'Engine Python' option
        plugin.unload()
        assert registry.providerById("satsynth") is None
        assert registry.algorithmById("satsynth:check_engine") is None
        assert runner.SETTING_NAME not in ProcessingConfig.settings
        plugin.unload()  # a second unload is harmless
    finally:
        ensure_provider()


def test_headless_init_processing_without_iface():
    plugin = satsynth_qgis.classFactory(None)
    registry = QgsApplication.processingRegistry()
    remove_provider()
    try:
        plugin.initProcessing()
        assert registry.providerById("satsynth") is not None
        plugin.unload()
        assert registry.providerById("satsynth") is None
    finally:
        ensure_provider()


def test_registered_algorithms_have_stable_ids_and_only_known_ones(provider):
    ids = {a.name() for a in provider.algorithms()}
    assert ids == {cls.INFO.alg_id for cls in ALGORITHMS}
    assert ids <= set(ALL_IDS), f"unknown algorithm ids: {ids - set(ALL_IDS)}"
    assert "check_engine" in ids


@pytest.mark.parametrize("cls", ALGORITHMS, ids=[c.INFO.alg_id for c in ALGORITHMS])
def test_every_algorithm_is_well_formed(provider, cls):
    alg = QgsApplication.processingRegistry().algorithmById(f"satsynth:{cls.INFO.alg_id}")
    assert alg is not None
    assert alg.displayName() and alg.group() and alg.groupId()
    assert len(alg.shortHelpString()) > 80, "every algorithm explains itself"
    assert not alg.icon().isNull()
    assert alg.outputDefinitions(), "every algorithm declares its outputs"
    for p in alg.parameterDefinitions():
        assert p.name().isupper() and p.description(), p.name()
    # the algorithm's own defaults validate once the required inputs are given
    clone = alg.create()
    assert clone.name() == alg.name()


def test_check_engine_through_processing(provider, engine_python):
    import processing
    from conftest import RecordingFeedback

    fb = RecordingFeedback()
    result = processing.run("satsynth:check_engine", {}, feedback=fb)
    assert result["VERSION"] and result["TORCH"]
    assert result["DEVICE"] in ("cpu", "cuda", "mps")
    assert result["ENGINE_SOURCE"]
    assert any("computes on" in m for m in fb.infos)


def test_check_engine_explains_a_missing_engine(provider, monkeypatch, tmp_path):
    old = runner.engine_setting()
    runner.set_engine_setting(str(tmp_path / "no-such-python"))
    monkeypatch.delenv(runner.ENV_VAR, raising=False)
    monkeypatch.setattr(runner, "checkout_root", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    try:
        alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:check_engine")
        context = QgsProcessingContext()
        with pytest.raises(QgsProcessingException) as info:
            alg.processAlgorithm({}, context, None)
        msg = str(info.value)
        assert type(info.value) is QgsProcessingException  # shown as a message, not a traceback
        assert str(tmp_path / "no-such-python") in msg and "Engine Python" in msg
    finally:
        runner.set_engine_setting(old)
