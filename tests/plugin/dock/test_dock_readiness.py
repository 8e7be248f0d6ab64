"""Which dock stage may run (satsynth_qgis.dock.readiness): pure rules, no widgets, no Qt."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from satsynth_qgis.dock.readiness import STAGES, DockFacts, stage_readiness

REPO = Path(__file__).resolve().parents[3]

#: everything chosen and every folder present
ALL = DockFacts(has_image=True, has_labels=True, labels_as_raster=False, classes_valid=True,
                has_run=True, has_dataset=True, has_generator=True, segmenter_ready=True,
                has_segment_raster=True, extent_mode="layer", experiment_ratios_text="0,1",
                experiment_ratios=[0.0, 1.0])


def test_every_stage_can_run_when_everything_is_there():
    assert stage_readiness(ALL) == {stage: "" for stage in STAGES}


def test_an_empty_dock_says_what_each_stage_needs():
    ready = stage_readiness(DockFacts())
    assert set(ready) == set(STAGES)
    assert ready["prepare"] == ready["run_all"] == (
        "needs an image layer, labels (a raster, or polygons and their class field), "
        "a valid class table, an output folder and run name")
    for stage in ("train_generator", "synthesize", "train_segmenter", "experiment"):
        assert ready[stage] == "needs an output folder and run name"
    assert ready["evaluate"] == ("needs a trained segmenter (run Train segmenter), "
                                 "an output folder and run name")
    assert ready["segment"] == ("needs a trained segmenter (run Train segmenter, or choose a "
                                "model folder), a raster to segment, an output folder and run name")
    assert ready["export"] == ("needs a trained segmenter (run Train segmenter, or choose a "
                               "model folder)")


def test_stages_follow_the_run_folder():
    fresh = replace(ALL, has_dataset=False, has_generator=False, segmenter_ready=False)
    ready = stage_readiness(fresh)
    assert ready["prepare"] == ""
    assert ready["train_generator"] == ready["train_segmenter"] == (
        "needs the prepared chips (run Prepare)")
    assert ready["synthesize"] == "needs a trained generator (run Train generator)"
    prepared = stage_readiness(replace(fresh, has_dataset=True))
    assert prepared["train_generator"] == prepared["train_segmenter"] == ""
    assert prepared["synthesize"] != ""
    assert stage_readiness(replace(fresh, has_dataset=True, has_generator=True))["synthesize"] == ""


def test_experiment_needs_parsable_ratios_and_a_generator_only_above_zero():
    no_gen = replace(ALL, has_generator=False)
    assert stage_readiness(no_gen)["experiment"] == (
        "needs a trained generator for ratios above 0 (run Train generator)")
    assert stage_readiness(replace(no_gen, experiment_ratios=[0.0]))["experiment"] == ""
    bad = replace(ALL, experiment_ratios_text="a,b", experiment_ratios=None)
    assert stage_readiness(bad)["experiment"] == (
        "needs experiment ratios like 0,1,2 (Advanced), not 'a,b'")
    assert stage_readiness(replace(ALL, has_dataset=False))["experiment"] == (
        "needs the prepared chips (run Prepare)")


def test_evaluate_uses_the_label_raster_or_the_prepared_chips():
    chips_gone = replace(ALL, has_dataset=False)
    assert stage_readiness(chips_gone)["evaluate"] == (
        "needs the prepared chips, whose validation chips are the reference (run Prepare), "
        "or a label raster")
    raster = replace(chips_gone, labels_as_raster=True)
    assert stage_readiness(raster)["evaluate"] == ""
    assert stage_readiness(replace(raster, has_labels=False))["evaluate"] == (
        "needs an image layer and its label raster")


def test_segment_area_and_a_chosen_model_folder():
    assert stage_readiness(replace(ALL, extent_mode="aoi"))["segment"] == (
        "needs an AOI polygon layer")
    assert stage_readiness(replace(ALL, extent_mode="aoi", has_aoi=True))["segment"] == ""
    assert stage_readiness(replace(ALL, extent_mode="canvas"))["segment"] == "needs a map canvas"
    assert stage_readiness(replace(ALL, extent_mode="canvas", has_canvas=True))["segment"] == ""
    # a chosen model folder needs no run folder; the run's own segmenter does
    no_run = replace(ALL, has_run=False)
    assert stage_readiness(no_run)["segment"] == "needs an output folder and run name"
    assert stage_readiness(replace(no_run, segmenter_chosen=True))["segment"] == ""
    assert stage_readiness(no_run)["export"] == ""


def test_the_readiness_model_imports_neither_qgis_nor_qt():
    code = ("import sys, satsynth_qgis.dock.readiness; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qgis', 'PyQt5', 'PyQt6', 'sip')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=env, check=True).stdout
    assert out.strip() == "[]"
