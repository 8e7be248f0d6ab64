"""Train upsampler: the super-resolution stage of the cascade (satsynth train-upsampler)."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from .. import compat
from .base import SatSynthAlgorithm
from .train_generator import PRESETS

FACTORS = ["2", "4"]


class TrainUpsampler(SatSynthAlgorithm):
    """``satsynth train-upsampler DATASET --base-size B --factor F --out UPSAMPLER``."""

    ALG_ID = "train_upsampler"
    DISPLAY = "Train upsampler"
    GROUP = "generator"
    ICON = "train_generator"
    HELP = (
        "Trains the super-resolution stage of the SatSynth cascade: a diffusion model that "
        "draws an image-mask pair of Base size x Factor pixels given the same pair at Base size "
        "(the real chips shrunk: image averaged, mask by majority class). The base generator "
        "then only has to learn the layout at low resolution and the upsampler adds the detail.\n\n"
        "Use it with a generator trained on the same dataset with 'Train at chip size' = Base "
        "size: Synthesize with this folder as 'Upsampler folder' writes pairs of Base size x "
        "Factor pixels. Base size x Factor must divide the dataset's chip size (chips larger "
        "than that are shrunk to it).\n\n"
        "Preset, Steps and Time budget as in 'Train joint generator'.\n\n"
        "Outputs: the upsampler folder, the training log (CSV) and a loss plot (PNG)."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.folder_param("DATASET", "Dataset folder (from Prepare training chips)"))
        self.addParameter(QgsProcessingParameterNumber(
            "BASE_SIZE", self.tr("Base size (px, the generator's chip size)"),
            compat.NUMBER_INTEGER, 32, minValue=8))
        self.addParameter(self.enum_param("FACTOR", "Upsampling factor", FACTORS, "2"))
        self.addParameter(self.enum_param("PRESET", "Model size preset", PRESETS, "tiny"))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", self.tr("Training steps (0 = engine default)"), compat.NUMBER_INTEGER, 0,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "MINUTES", self.tr("Time budget in minutes (0 = none)"), compat.NUMBER_DOUBLE, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Batch size (0 = engine default)"), compat.NUMBER_INTEGER, 0,
            minValue=0))
        self.addParameter(self.device_param())
        self.addParameter(compat.advanced(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), compat.NUMBER_INTEGER, 0, minValue=0)))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT", self.tr("Upsampler folder")))
        self.addOutput(QgsProcessingOutputFolder("UPSAMPLER", self.tr("Upsampler folder")))
        self.addOutput(QgsProcessingOutputFile("LOG", self.tr("Training log (CSV)")))
        self.addOutput(QgsProcessingOutputFile("LOSS_PLOT", self.tr("Loss plot (PNG)")))
        self.addOutput(QgsProcessingOutputNumber("STEPS_DONE", self.tr("Steps trained")))

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        ok, msg = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, msg
        return self.folder_checks(parameters, context, {"DATASET": "dataset"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.folder_value(self.parameterAsString(parameters, "OUTPUT", context))
        args = ["train-upsampler", self.parameterAsFile(parameters, "DATASET", context),
                "--out", out,
                "--base-size", str(self.parameterAsInt(parameters, "BASE_SIZE", context)),
                "--factor", self.enum_value(parameters, "FACTOR", context),
                "--preset", self.enum_value(parameters, "PRESET", context),
                "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        for name, flag in (("STEPS", "--steps"), ("BATCH_SIZE", "--batch-size")):
            value = self.parameterAsInt(parameters, name, context)
            if value:
                args += [flag, str(value)]
        minutes = self.parameterAsDouble(parameters, "MINUTES", context)
        if minutes:
            args += ["--minutes", repr(minutes)]
        self.add_device_args(args, self.enum_value(parameters, "DEVICE", context))
        outputs = self.engine(args, feedback)
        if outputs.get("interrupted"):
            feedback.pushWarning("Training stopped early; the checkpoint is usable.")
        return {"OUTPUT": out, "UPSAMPLER": str(outputs.get("model") or out),
                "LOG": str(outputs.get("log") or ""), "LOSS_PLOT": str(outputs.get("loss_plot") or ""),
                "STEPS_DONE": outputs.get("steps")}
