"""From the dock's choices to the provider's algorithm parameters (one function per stage).

The parameter names are the provider's (``satsynth_qgis/algorithms/``); the dock adds nothing the
toolbox could not do, it only fills the parameters from the panel and the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
    QgsRectangle,
)

from ..contract import contract
from .presets import StageSettings
from .run_folder import RunFolder

#: The dock's choice lists: the engine's (satsynth.contract); the encoders add the tiny
#: architecture's example.
GENERATOR_SIZES = contract.GENERATOR_PRESETS
SAMPLERS = contract.SAMPLERS
ARCHITECTURES = contract.ARCHITECTURES
ENCODERS = (*contract.ENCODERS, contract.TINY_ENCODER)
DEVICES = contract.DEVICES
RECIPES = contract.RECIPES
MIXED_PRECISION = contract.MIXED_PRECISIONS
BUDGETS = contract.BUDGETS
PRETRAINED = contract.PRETRAINED
TORCHGEO_SUGGESTED = contract.TORCHGEO_SUGGESTED

ALGORITHMS = {
    "prepare": "satsynth:prepare_chips",
    "train_generator": "satsynth:train_generator",
    "synthesize": "satsynth:synthesize",
    "train_segmenter": "satsynth:train_segmenter",
    "evaluate": "satsynth:evaluate_segmenter",
    "experiment": "satsynth:run_experiment",
    "segment": "satsynth:segment_raster",
    "export": "satsynth:export_segmenter",
    "run_all": "satsynth:run_pipeline",
}


@dataclass
class DockInputs:
    """A snapshot of the dock's choices."""

    image: QgsMapLayer | None
    label_mode: str  # "raster" | "vector"
    label_raster: QgsMapLayer | None
    label_vector: QgsMapLayer | None
    class_field: str
    run: RunFolder | None
    settings: StageSettings
    segment_layer: QgsMapLayer | None = None
    extent_mode: str = "layer"  # "layer" | "canvas" | "aoi"
    canvas_extent: QgsRectangle | None = None
    canvas_crs: QgsCoordinateReferenceSystem | None = None
    aoi: QgsMapLayer | None = None
    segmenter: Path | None = None
    project: QgsProject | None = None


def _labels(i: DockInputs) -> dict[str, Any]:
    if i.label_mode == "raster":
        return {"LABELS": i.label_raster}
    return {"VECTOR": i.label_vector, "CLASS_FIELD": i.class_field}


def _device(s: StageSettings) -> dict[str, Any]:
    return {"DEVICE": s.device}


def _run(i: DockInputs) -> RunFolder:
    if i.run is None:
        raise ValueError("no run folder: choose an output folder and a run name")
    return i.run


def prepare(i: DockInputs) -> dict[str, Any]:
    s, rf = i.settings, _run(i)
    return {"IMAGE": i.image, **_labels(i), "CLASSES": str(rf.classes),
            "CHIP_SIZE": s.chip_size, "STRIDE": s.stride, "VAL_FRACTION": s.val_fraction,
            "OUTPUT": str(rf.dataset)}


def train_generator(i: DockInputs) -> dict[str, Any]:
    s, rf = i.settings, _run(i)
    return {"DATASET": str(rf.dataset), "RECIPE": s.recipe, "PRESET": s.generator_size,
            "STEPS": s.generator_steps, "BATCH_SIZE": s.batch_size, **_device(s),
            "MIXED_PRECISION": s.mixed_precision, "SEED": s.seed, "OUTPUT": str(rf.generator)}


def synthesize(i: DockInputs) -> dict[str, Any]:
    s, rf = i.settings, _run(i)
    return {"GENERATOR": str(rf.generator), "COUNT": s.synth_count, "SAMPLER": s.sampler,
            "STEPS": s.sampler_steps, "SEED": s.seed, **_device(s),
            **({"UPSAMPLER": s.upsampler} if s.upsampler else {}),
            "OUTPUT": str(rf.synthetic)}


def _weights(s: Any) -> dict[str, Any]:
    """The encoder's starting weights (Train segmenter, the experiment): a file wins over the
    pretrained choice."""
    if s.encoder_weights:
        return {"ENCODER_WEIGHTS": s.encoder_weights}
    if s.pretrained == "torchgeo":
        return {"PRETRAINED": "torchgeo",
                "TORCHGEO_WEIGHTS": s.torchgeo_weights or TORCHGEO_SUGGESTED}
    return {"PRETRAINED": s.pretrained} if s.pretrained in PRETRAINED[1:] else {}


def train_segmenter(i: DockInputs) -> dict[str, Any]:
    s, rf = i.settings, _run(i)
    p = {"DATASET": str(rf.dataset), "ARCH": s.arch, "ENCODER": s.encoder, "EPOCHS": s.epochs,
         "BATCH_SIZE": s.batch_size, **_device(s), "MIXED_PRECISION": s.mixed_precision,
         "SEED": s.seed, "OUTPUT": str(rf.segmenter)}
    p.update(_weights(s))
    if rf.has("synthetic") and s.synthetic_ratio > 0:
        p.update({"SYNTHETIC": str(rf.synthetic), "RATIO": s.synthetic_ratio})
    return p


def experiment(i: DockInputs) -> dict[str, Any]:
    """Does synthetic data help? Into the run's experiment folder, so that running it again
    after a cancel resumes it."""
    s, rf = i.settings, _run(i)
    p = {"DATASET": str(rf.dataset), "RATIOS": s.experiment_ratios,
         "SEEDS": s.experiment_seeds, "BUDGET": s.experiment_budget,
         "REAL_FRACTION": s.real_fraction, "ARCH": s.arch, "ENCODER": s.encoder,
         "EPOCHS": s.epochs, "BATCH_SIZE": s.batch_size, **_device(s),
         "OUTPUT": str(rf.experiment), **_weights(s)}
    if rf.has("generator"):
        p["GENERATOR"] = str(rf.generator)
        if s.upsampler:  # the same cascade as Synthesize uses
            p["UPSAMPLER"] = s.upsampler
    return p


def evaluate(i: DockInputs) -> dict[str, Any]:
    """Against the image and its label raster, or (vector labels) the run's validation chips."""
    rf = _run(i)
    p: dict[str, Any] = {"MODEL": str(i.segmenter), **_device(i.settings),
                         "OUTPUT": str(rf.evaluation)}
    if i.label_mode == "raster":
        p.update({"IMAGE": i.image, "LABELS": i.label_raster})
    else:
        p["DATASET"] = str(rf.dataset)
    return p


def segment(i: DockInputs) -> dict[str, Any]:
    s = i.settings
    layer = i.segment_layer
    name = layer.name() if layer is not None else "raster"
    rf = i.run or RunFolder(Path(str(i.segmenter)).parent)
    project = i.project or QgsProject.instance()
    p: dict[str, Any] = {
        "MODEL": str(i.segmenter), "INPUT": layer, "TILE": s.tile, "OVERLAP": s.overlap,
        **_device(s),
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(rf.prediction(name)), project),
        "OUTPUT_CONFIDENCE": QgsProcessingOutputLayerDefinition(
            str(rf.prediction(name, "confidence")), project),
        "OUTPUT_VECTOR": QgsProcessingOutputLayerDefinition(
            str(rf.prediction(name, "polygons")), project),
    }
    if i.extent_mode == "canvas" and i.canvas_extent is not None:
        crs = i.canvas_crs.authid() if i.canvas_crs is not None else ""
        e = i.canvas_extent
        p["EXTENT"] = (f"{e.xMinimum()},{e.xMaximum()},{e.yMinimum()},{e.yMaximum()}"
                       + (f" [{crs}]" if crs else ""))
    elif i.extent_mode == "aoi" and i.aoi is not None:
        p["AOI"] = i.aoi
    return p


def export(i: DockInputs) -> dict[str, Any]:
    """The segmenter as SEGMENTER.onnx beside its folder, for the dock's tile and overlap."""
    s, seg = i.settings, Path(str(i.segmenter))
    return {"MODEL": str(seg), "TILE": s.tile, "OVERLAP": s.overlap,
            "OUTPUT": str(seg.with_name(seg.name + ".onnx"))}


def run_all(i: DockInputs) -> dict[str, Any]:
    s, rf = i.settings, _run(i)
    p = {"IMAGE": i.image, **_labels(i), "CLASSES": str(rf.classes),
         "CHIP_SIZE": s.chip_size, "GENERATOR_PRESET": s.generator_size,
         "GENERATOR_STEPS": s.generator_steps, "COUNT": s.synth_count,
         "SAMPLER_STEPS": s.sampler_steps, "BATCH_SIZE": s.batch_size,
         "ARCH": s.arch, "ENCODER": s.encoder, "EPOCHS": s.epochs,
         "RATIO": s.synthetic_ratio, "TILE": s.tile, "OVERLAP": s.overlap, "SEED": s.seed,
         **_device(s), "OUTPUT_FOLDER": str(rf.root)}
    if i.segment_layer is not None:
        p["SEGMENT_INPUT"] = i.segment_layer
    return p


BUILDERS = {"prepare": prepare, "train_generator": train_generator, "synthesize": synthesize,
            "train_segmenter": train_segmenter, "evaluate": evaluate,
            "experiment": experiment, "segment": segment, "export": export,
            "run_all": run_all}


def build(stage: str, inputs: DockInputs) -> tuple[str, dict[str, Any]]:
    """The algorithm id and parameters for one stage."""
    return ALGORITHMS[stage], BUILDERS[stage](inputs)


def report_path(results: dict[str, Any]) -> str:
    """The HTML (else JSON) report among an algorithm's results ('' when none)."""
    candidates = [str(v) for v in results.values() if isinstance(v, str)]
    for suffix in (".html", ".htm", ".json"):
        for c in candidates:
            if c.lower().endswith(suffix) and Path(c).is_file():
                return c
    return ""


def experiment_outcome(results: dict[str, Any]) -> list[str]:
    """One line per compared variant of a finished experiment, from its ``results.json`` (the
    engine's reading of each paired interval: better, worse, cannot tell, or no difference of
    0.02 or more, with the minimum detectable difference and the seeds that would detect 0.02);
    [] when the file is missing or unreadable."""
    import json

    path = str(results.get("RESULTS") or "")
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    lines = []
    for row in summary:
        if row.get("variant") == "real" or row.get("miou_delta") is None:
            continue
        ci = row.get("miou_delta_ci")
        line = (f"{row['variant']} R={row['ratio']:g}: {row.get('verdict', '')} "
                f"(Δ mIoU {row['miou_delta']:+.3f}"
                + (f", 95 % interval [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + ")")
        if row.get("mde") is not None:
            need = row.get("seeds_for_target")
            line += (f"; the smallest difference these {len(row.get('paired_seeds', []))} "
                     f"seeds could detect: {row['mde']:.3f}"
                     + (f"; {need} seeds would detect {row.get('target_difference', 0.02):g}"
                        if need else ""))
        lines.append(line)
    return lines

