"""Which of the dock's stages can run, given what the user chose and what the run folder holds.

Pure Python (no Qt): the panel takes a :class:`DockFacts` snapshot of its widgets and run folder,
and :func:`stage_readiness` says for every stage either '' (it can run) or what it still needs,
which the panel shows as the stage button's tooltip and in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Stage -> button label, in pipeline order.
STAGES = {
    "prepare": "Prepare",
    "train_generator": "Train generator",
    "synthesize": "Synthesize",
    "train_segmenter": "Train segmenter",
    "evaluate": "Evaluate",
    "experiment": "Does synthetic data help?",
    "segment": "Segment",
    "export": "Export ONNX",
    "run_all": "Run all",
}

_NO_RUN = "an output folder and run name"
_NEEDS_CHIPS = "needs the prepared chips (run Prepare)"


@dataclass(frozen=True)
class DockFacts:
    """What the readiness rules look at: the dock's choices and what exists on disk."""

    has_image: bool = False
    #: labels are chosen: a label raster, or polygons and their class field (per ``labels_as_raster``)
    has_labels: bool = False
    labels_as_raster: bool = False
    classes_valid: bool = False
    #: an output folder and a run name are set (so the run folder is known)
    has_run: bool = False
    has_dataset: bool = False
    has_generator: bool = False
    #: the segmenter to use (the chosen model folder, else the run's) has been trained
    segmenter_ready: bool = False
    #: a model folder was chosen for Segment (it then needs no run folder)
    segmenter_chosen: bool = False
    has_segment_raster: bool = False
    #: the area to segment: "layer", "canvas" or "aoi"
    extent_mode: str = "layer"
    has_aoi: bool = False
    has_canvas: bool = False
    #: the experiment's ratios as typed, and as parsed (None when they do not parse)
    experiment_ratios_text: str = ""
    experiment_ratios: Sequence[float] | None = None


def _needs(missing: list[str]) -> str:
    return ("needs " + ", ".join(missing)) if missing else ""


def stage_readiness(f: DockFacts) -> dict[str, str]:
    """Stage -> '' when it can run, else what is missing ("needs ...")."""
    base = []
    if not f.has_image:
        base.append("an image layer")
    if not f.has_labels:
        base.append("labels (a raster, or polygons and their class field)")
    if not f.classes_valid:
        base.append("a valid class table")
    if not f.has_run:
        base.append(_NO_RUN)
    no_run = _needs([_NO_RUN])
    ready = {
        "prepare": _needs(base),
        "run_all": _needs(base),
        "train_generator": no_run if not f.has_run else ("" if f.has_dataset else _NEEDS_CHIPS),
        "synthesize": no_run if not f.has_run else
        ("" if f.has_generator else "needs a trained generator (run Train generator)"),
        "train_segmenter": no_run if not f.has_run else ("" if f.has_dataset else _NEEDS_CHIPS),
        "experiment": _experiment_readiness(f),
    }
    ev = []
    if not f.segmenter_ready:
        ev.append("a trained segmenter (run Train segmenter)")
    if not f.has_run:
        ev.append(_NO_RUN)
    elif f.labels_as_raster:
        if not f.has_image or not f.has_labels:
            ev.append("an image layer and its label raster")
    elif not f.has_dataset:
        ev.append("the prepared chips, whose validation chips are the reference "
                  "(run Prepare), or a label raster")
    ready["evaluate"] = _needs(ev)
    trained = "a trained segmenter (run Train segmenter, or choose a model folder)"
    sg = []
    if not f.segmenter_ready:
        sg.append(trained)
    if not f.has_segment_raster:
        sg.append("a raster to segment")
    if f.extent_mode == "aoi" and not f.has_aoi:
        sg.append("an AOI polygon layer")
    if f.extent_mode == "canvas" and not f.has_canvas:
        sg.append("a map canvas")
    if not f.has_run and not f.segmenter_chosen:
        sg.append(_NO_RUN)
    ready["segment"] = _needs(sg)
    ready["export"] = "" if f.segmenter_ready else _needs([trained])
    return ready


def _experiment_readiness(f: DockFacts) -> str:
    """Why the experiment cannot run ('' when it can)."""
    if not f.has_run:
        return _needs([_NO_RUN])
    if not f.has_dataset:
        return _NEEDS_CHIPS
    if not f.experiment_ratios:
        return f"needs experiment ratios like 0,1,2 (Advanced), not '{f.experiment_ratios_text}'"
    if max(f.experiment_ratios) > 0 and not f.has_generator:
        return "needs a trained generator for ratios above 0 (run Train generator)"
    return ""
