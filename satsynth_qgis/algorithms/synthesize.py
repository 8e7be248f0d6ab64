"""Synthesize image-mask pairs from a trained joint generator (satsynth synthesize).

``satsynth synthesize GENERATOR --count N --out SYN``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .. import compat
from ..contract import contract
from ..styling import ClassStylePostProcessor
from .base import AlgorithmInfo, SatSynthAlgorithm


def favor_items(text: str) -> list[str]:
    """'Water=3; Road=0.5' -> ['Water=3', 'Road=0.5']; ValueError names a malformed item."""
    items = [t.strip() for t in (text or "").split(";") if t.strip()]
    for item in items:
        name, sep, factor = item.rpartition("=")
        try:
            ok = bool(sep and name.strip()) and float(factor) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"Favor classes: '{item}' is not CLASS=FACTOR with a positive "
                             "factor (e.g. Water=3)")
    return items


class Synthesize(SatSynthAlgorithm):
    """Samples new image chips together with their label masks from a trained joint generator. The
    pairs are written as a synthetic dataset (for 'Train segmenter'), as georeferenced GeoTIFF chips
    laid out beside the source area, and as two mosaics (VRT) that are loaded: the synthetic images
    and their labels, styled by class.

    Sampler: model default (dpm, or ddpm for a generator trained with the paper's recipe), dpm
    (DPM-Solver++, good in 20 steps), ddim, or ddpm (all 1000 steps, slow, the reference). Steps
    applies to dpm and ddim.

    Favor classes (advanced; generators trained with class-share conditioning, the default): ask for
    more or less of some classes, as CLASS=FACTOR items separated by semicolons, e.g. 'Water=3;
    Road=0.5' (class names or ids). A factor of 3 makes chips made only of that class three times as
    likely.

    Score with segmenter (advanced): a segmenter trained on real chips only segments every synthetic
    image, and each pair is scored by how well that agrees with its mask (pair mIoU and pixel
    accuracy). The scores are attributes of the pair footprints (miou, pixel_accuracy, rank; 1 =
    most consistent): sort the attribute table to look at the best and worst pairs. Keep fraction (0
    = all) keeps only the most consistent pairs.

    Upsampler folder (advanced, optional; from 'Train upsampler'): the super-resolution cascade.
    Each pair is drawn at the generator's size, then at the upsampler's, which is the size written
    (the generator must have been trained at the upsampler's base size).

    Outputs: the synthetic folder, both mosaics, the pair footprints, a sample grid (PNG) and a
    report (JSON) comparing the class shares of real and synthetic labels.
    """

    INFO = AlgorithmInfo("synthesize", "Synthesize image-mask pairs", group="generator",
                         icon="synthesize", output_kind="synthetic",
                         output_inputs=("GENERATOR", "UPSAMPLER", "SCORE_WITH"))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("GENERATOR"))
        self.addParameter(QgsProcessingParameterNumber(
            "COUNT", self.tr("Number of pairs"), compat.NUMBER_INTEGER, 64, minValue=1))
        defaults = contract.SynthesizeFields()
        self.addParameter(self.sampler_param())
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("Sampling steps (dpm, ddim)"), compat.NUMBER_INTEGER, defaults.steps,
            minValue=1, maxValue=1000))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), compat.NUMBER_INTEGER, defaults.seed, minValue=0))
        self.addParameter(self.device_param())
        self.add_advanced(
            QgsProcessingParameterNumber("BATCH_SIZE", self.tr(
                "Pairs per batch (0 = engine default)"), compat.NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterString("FAVOR", self.tr(
                "Favor classes (e.g. Water=3; Road=0.5)"), optional=True),
            self.folder_param("UPSAMPLER", "Upsampler folder (from Train upsampler)",
                              optional=True),
            self.folder_param("SCORE_WITH", "Score with segmenter (trained on real chips)",
                              optional=True),
            QgsProcessingParameterNumber("KEEP", self.tr(
                "Keep the most consistent fraction (0 = all; needs a segmenter)"),
                compat.NUMBER_DOUBLE, 0.0, minValue=0.0, maxValue=1.0),
        )
        self.add_output_folder("Synthetic folder", "SYNTHETIC")
        self.add_outputs(QgsProcessingOutputVectorLayer, FOOTPRINTS="Synthetic pair footprints")
        self.add_outputs(QgsProcessingOutputRasterLayer, IMAGES="Synthetic images",
                         LABELS="Synthetic labels")
        self.add_outputs(QgsProcessingOutputFile, REPORT="Class-share report (JSON)",
                         GRID="Sample grid (PNG)")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        try:
            favor_items(self.parameterAsString(parameters, "FAVOR", context))
        except ValueError as exc:
            return str(exc)
        keep = self.parameterAsDouble(parameters, "KEEP", context)
        if keep > 0 and not self.parameterAsFile(parameters, "SCORE_WITH", context):
            return self.tr("Keep fraction needs a segmenter to score the pairs (Score with "
                           "segmenter)")
        return self.folders_problem(parameters, context, {"UPSAMPLER": "upsampler",
                                                          "GENERATOR": "generator",
                                                          "SCORE_WITH": "segmenter"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        args = ["synthesize", self.parameterAsFile(parameters, "GENERATOR", context),
                "--count", str(self.parameterAsInt(parameters, "COUNT", context)),
                "--out", out, "--steps", str(self.parameterAsInt(parameters, "STEPS", context)),
                "--seed", str(self.parameterAsInt(parameters, "SEED", context)),
                # no sampler: the engine uses the generator's recipe's
                *self.optional_args(parameters, context, {"SAMPLER": "--sampler"})]
        if self.enum_value(parameters, "SAMPLER", context) == "ddpm":
            feedback.pushInfo("The ddpm sampler runs all 1000 steps (Sampling steps is ignored).")
        for item in favor_items(self.parameterAsString(parameters, "FAVOR", context)):
            args += ["--favor", item]
        # KEEP is refused without SCORE_WITH (values_problem)
        args += self.optional_args(parameters, context, {
            "SCORE_WITH": "--score-with", "KEEP": "--keep", "UPSAMPLER": "--upsampler",
            "BATCH_SIZE": "--batch-size", "DEVICE": "--device"})
        outputs = self.engine(args, feedback)
        files = self.engine_files(outputs, IMAGES="images_vrt", LABELS="labels_vrt",
                                  REPORT="report", GRID="grid")
        if files["IMAGES"]:
            self.load_on_completion(context, files["IMAGES"], self.tr("Synthetic images"),
                                    "IMAGES", raster=True)
        if files["LABELS"]:
            self.load_on_completion(context, files["LABELS"], self.tr("Synthetic labels"),
                                    "LABELS", raster=True,
                                    post_processor=ClassStylePostProcessor.create())
        footprints = str(Path(outputs.get("synthetic") or out) / "chips.gpkg")
        if Path(footprints).is_file():
            self.load_on_completion(context, footprints, self.tr("Synthetic pair footprints"),
                                    "FOOTPRINTS", raster=False)
        else:
            footprints = ""
        self.push_number(feedback, outputs.get("pair_miou_mean"),
                         "Pair consistency: mean pair mIoU {:.3f} (sort the footprints by 'rank' "
                         "to see the best and worst pairs).")
        self.push_number(feedback, outputs.get("tv_distance"),
                         "Class shares, synthetic vs real: total variation distance {:.3f} "
                         "(0 = identical).")
        return {"OUTPUT": out, "SYNTHETIC": str(outputs.get("synthetic") or out),
                "FOOTPRINTS": footprints, **files}
