"""Synthesize image-mask pairs from a trained joint generator (satsynth synthesize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .. import compat
from ..contract import contract
from ..styling import ClassStylePostProcessor
from .base import SatSynthAlgorithm

#: "model default": the sampler of the generator's recipe (dpm; ddpm for --recipe paper models)
MODEL_DEFAULT_SAMPLER = "model default"
SAMPLERS = [MODEL_DEFAULT_SAMPLER, *contract.SAMPLERS]


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
    """``satsynth synthesize GENERATOR --count N --out SYN``."""

    ALG_ID = "synthesize"
    DISPLAY = "Synthesize image-mask pairs"
    GROUP = "generator"
    ICON = "synthesize"
    OUTPUT_KIND = "synthetic"
    OUTPUT_INPUTS = ("GENERATOR", "UPSAMPLER", "SCORE_WITH")
    HELP = (
        "Samples new image chips together with their label masks from a trained joint generator. "
        "The pairs are written as a synthetic dataset (for 'Train segmenter'), as georeferenced "
        "GeoTIFF chips laid out beside the source area, and as two mosaics (VRT) that are loaded: "
        "the synthetic images and their labels, styled by class.\n\n"
        "Sampler: model default (dpm, or ddpm for a generator trained with the paper's recipe), "
        "dpm (DPM-Solver++, good in 20 steps), ddim, or ddpm (all 1000 steps, slow, the "
        "reference). Steps applies to dpm and ddim.\n\n"
        "Favor classes (advanced; generators trained with class-share conditioning, the "
        "default): ask for more or less of some classes, as CLASS=FACTOR items separated by "
        "semicolons, e.g. 'Water=3; Road=0.5' (class names or ids). A factor of 3 makes chips "
        "made only of that class three times as likely.\n\n"
        "Score with segmenter (advanced): a segmenter trained on real chips only segments every "
        "synthetic image, and each pair is scored by how well that agrees with its mask (pair "
        "mIoU and pixel accuracy). The scores are attributes of the pair footprints (miou, "
        "pixel_accuracy, rank; 1 = most consistent): sort the attribute table to look at the "
        "best and worst pairs. Keep fraction (0 = all) keeps only the most consistent pairs.\n\n"
        "Upsampler folder (advanced, optional; from 'Train upsampler'): the super-resolution "
        "cascade. Each pair is drawn at the generator's size, then at the upsampler's, which is "
        "the size written (the generator must have been trained at the upsampler's base size)."
        "\n\n"
        "Outputs: the synthetic folder, both mosaics, the pair footprints, a sample grid (PNG) "
        "and a report (JSON) comparing the class shares of real and synthetic labels."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.folder_param("GENERATOR", "Generator folder (from Train joint generator)"))
        self.addParameter(QgsProcessingParameterNumber(
            "COUNT", self.tr("Number of pairs"), compat.NUMBER_INTEGER, 64, minValue=1))
        defaults = contract.SynthesizeFields()
        self.addParameter(self.enum_param("SAMPLER", "Sampler", SAMPLERS, MODEL_DEFAULT_SAMPLER))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("Sampling steps (dpm, ddim)"), compat.NUMBER_INTEGER, defaults.steps,
            minValue=1, maxValue=1000))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), compat.NUMBER_INTEGER, defaults.seed, minValue=0))
        self.addParameter(self.device_param())
        self.addParameter(compat.advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Pairs per batch (0 = engine default)"), compat.NUMBER_INTEGER,
            0, minValue=0)))
        self.addParameter(compat.advanced(QgsProcessingParameterString(
            "FAVOR", self.tr("Favor classes (e.g. Water=3; Road=0.5)"), optional=True)))
        self.addParameter(compat.advanced(self.folder_param(
            "UPSAMPLER", "Upsampler folder (from Train upsampler)", optional=True)))
        self.addParameter(compat.advanced(self.folder_param(
            "SCORE_WITH", "Score with segmenter (trained on real chips)", optional=True)))
        self.addParameter(compat.advanced(QgsProcessingParameterNumber(
            "KEEP", self.tr("Keep the most consistent fraction (0 = all; needs a segmenter)"),
            compat.NUMBER_DOUBLE, 0.0, minValue=0.0, maxValue=1.0)))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT", self.tr("Synthetic folder")))
        self.addOutput(QgsProcessingOutputFolder("SYNTHETIC", self.tr("Synthetic folder")))
        self.addOutput(QgsProcessingOutputVectorLayer("FOOTPRINTS",
                                                      self.tr("Synthetic pair footprints")))
        self.addOutput(QgsProcessingOutputRasterLayer("IMAGES", self.tr("Synthetic images")))
        self.addOutput(QgsProcessingOutputRasterLayer("LABELS", self.tr("Synthetic labels")))
        self.addOutput(QgsProcessingOutputFile("REPORT", self.tr("Class-share report (JSON)")))
        self.addOutput(QgsProcessingOutputFile("GRID", self.tr("Sample grid (PNG)")))

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        ok, msg = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, msg
        try:
            favor_items(self.parameterAsString(parameters, "FAVOR", context))
        except ValueError as exc:
            return False, str(exc)
        keep = self.parameterAsDouble(parameters, "KEEP", context)
        if keep > 0 and not self.parameterAsFile(parameters, "SCORE_WITH", context):
            return False, self.tr("Keep fraction needs a segmenter to score the pairs (Score "
                                  "with segmenter)")
        ok, msg = self.folder_checks(parameters, context, {"UPSAMPLER": "upsampler"})
        if not ok:
            return ok, msg
        return self.folder_checks(parameters, context, {"GENERATOR": "generator",
                                                        "SCORE_WITH": "segmenter"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.folder_value(self.parameterAsString(parameters, "OUTPUT", context))
        args = ["synthesize", self.parameterAsFile(parameters, "GENERATOR", context),
                "--count", str(self.parameterAsInt(parameters, "COUNT", context)),
                "--out", out, "--steps", str(self.parameterAsInt(parameters, "STEPS", context)),
                "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        sampler = self.enum_value(parameters, "SAMPLER", context)
        if sampler in contract.SAMPLERS:  # else the engine uses the generator's recipe's
            args += ["--sampler", sampler]
        if sampler == "ddpm":
            feedback.pushInfo("The ddpm sampler runs all 1000 steps (Sampling steps is ignored).")
        for item in favor_items(self.parameterAsString(parameters, "FAVOR", context)):
            args += ["--favor", item]
        score_with = self.parameterAsFile(parameters, "SCORE_WITH", context)
        if score_with:
            args += ["--score-with", score_with]
            keep = self.parameterAsDouble(parameters, "KEEP", context)
            if keep > 0:
                args += ["--keep", repr(keep)]
        upsampler = self.parameterAsFile(parameters, "UPSAMPLER", context)
        if upsampler:
            args += ["--upsampler", upsampler]
        batch = self.parameterAsInt(parameters, "BATCH_SIZE", context)
        if batch:
            args += ["--batch-size", str(batch)]
        self.add_device_args(args, self.enum_value(parameters, "DEVICE", context))
        outputs = self.engine(args, feedback)
        images = str(outputs.get("images_vrt") or "")
        labels = str(outputs.get("labels_vrt") or "")
        if images:
            self.load_on_completion(context, images, self.tr("Synthetic images"), "IMAGES",
                                    raster=True)
        if labels:
            self.load_on_completion(context, labels, self.tr("Synthetic labels"), "LABELS",
                                    raster=True, post_processor=ClassStylePostProcessor.create(
                                        outputs.get("labels_qml")))
        footprints = str(Path(outputs.get("synthetic") or out) / "chips.gpkg")
        if Path(footprints).is_file():
            self.load_on_completion(context, footprints, self.tr("Synthetic pair footprints"),
                                    "FOOTPRINTS", raster=False)
        else:
            footprints = ""
        if isinstance(outputs.get("pair_miou_mean"), (int, float)):
            feedback.pushInfo(f"Pair consistency: mean pair mIoU {outputs['pair_miou_mean']:.3f}"
                              f" (sort the footprints by 'rank' to see the best and worst pairs).")
        shares = outputs.get("tv_distance")
        if isinstance(shares, (int, float)):
            feedback.pushInfo(f"Class shares, synthetic vs real: total variation distance "
                              f"{shares:.3f} (0 = identical).")
        return {"OUTPUT": out, "SYNTHETIC": str(outputs.get("synthetic") or out),
                "IMAGES": images, "LABELS": labels, "FOOTPRINTS": footprints,
                "REPORT": str(outputs.get("report") or ""),
                "GRID": str(outputs.get("grid") or "")}
