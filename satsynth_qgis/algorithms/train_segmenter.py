"""Train segmenter: a segmentation model on real (+ synthetic) chips (satsynth train-segmenter).

``satsynth train-segmenter DATASET --out SEG [--synthetic SYN --ratio R]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .. import compat
from ..contract import contract
from .base import AlgorithmInfo, SatSynthAlgorithm


def encoder_problem(arch: str, encoder: str) -> str:
    """Why ``encoder`` does not fit ``arch`` ('' when it does)."""
    tiny, example = contract.TINY_ARCH, contract.TINY_ENCODER
    if arch == tiny and not encoder.startswith("w"):
        return (f"The {tiny} architecture takes an encoder like {example} (width 16, depth 2), "
                f"not '{encoder}'.")
    if arch != tiny and encoder.startswith("w") and encoder[1:2].isdigit():
        return (f"Encoder '{encoder}' is for the {tiny} architecture; choose e.g. "
                f"{contract.ENCODERS[0]} for the others.")
    return ""


class TrainSegmenter(SatSynthAlgorithm):
    """Trains a semantic segmentation model on the real training chips of a dataset, optionally
    mixed with synthetic pairs: Ratio R adds R synthetic pairs per real pair (the paper's |D'| = R
    |D|). Validation always uses real chips only, and the model with the best validation mIoU is
    kept.

    Architecture: fpn (the paper's), unet, deeplabv3plus, pspnet, segformer (use encoder mit_b0), or
    tiny (a small conv net for quick CPU checks; its encoder reads e.g. w16d2). Encoders start from
    random weights unless 'Encoder weights' names a local file (.safetensors or .pth, e.g. ImageNet
    weights of the chosen encoder): nothing is downloaded. Mixed precision: auto (the default)
    computes in bf16 on CPUs with AVX512-BF16 or AMX and on GPUs with bf16, fp16 on other
    tensor-core GPUs, float32 elsewhere; the weights stay float32.

    Outputs: the segmenter folder, its metrics file (JSON) and the validation mIoU.
    """

    INFO = AlgorithmInfo("train_segmenter", "Train segmenter", group="segmenter",
                         icon="train_segmenter", output_kind="segmenter",
                         output_inputs=("DATASET", "SYNTHETIC", "ENCODER_WEIGHTS"))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        d = contract.SegmenterTrainFields()
        self.addParameter(self.stage_folder_param("DATASET"))
        self.addParameter(self.folder_param(
            "SYNTHETIC", "Synthetic folder (from Synthesize image-mask pairs)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "RATIO", self.tr("Synthetic pairs per real pair R (with a synthetic folder)"),
            compat.NUMBER_DOUBLE, 1.0, minValue=0.0, maxValue=100.0))
        self.addParameter(self.enum_param("ARCH", "Architecture", contract.ARCHITECTURES, d.arch))
        self.addParameter(QgsProcessingParameterString("ENCODER", self.tr("Encoder"), d.encoder))
        self.addParameter(QgsProcessingParameterNumber(
            "EPOCHS", self.tr("Maximum epochs"), compat.NUMBER_INTEGER, d.epochs, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Batch size (0 = engine default)"), compat.NUMBER_INTEGER, 0,
            minValue=0))
        self.addParameter(self.device_param())
        self.add_advanced(
            QgsProcessingParameterNumber("PATIENCE", self.tr(
                "Stop after this many epochs without a better mIoU (0 = never)"),
                compat.NUMBER_INTEGER, d.patience, minValue=0),
            QgsProcessingParameterNumber("MINUTES", self.tr("Time budget in minutes (0 = none)"),
                                         compat.NUMBER_DOUBLE, 0.0, minValue=0.0),
            QgsProcessingParameterNumber("SEED", self.tr("Random seed"), compat.NUMBER_INTEGER,
                                         d.seed, minValue=0),
            QgsProcessingParameterFile("ENCODER_WEIGHTS", self.tr(
                "Encoder weights (a local .safetensors or .pth file)"), compat.FILE_FILE,
                optional=True, fileFilter="Weights (*.safetensors *.pth *.pt)"),
            self.enum_param("MIXED_PRECISION",
                            "Mixed precision (auto: bf16 where the CPU or GPU has it)",
                            contract.MIXED_PRECISIONS, d.mixed_precision),
        )
        self.add_output_folder("Segmenter folder", "MODEL")
        self.add_outputs(QgsProcessingOutputFile, METRICS="Metrics (JSON)")
        self.add_outputs(QgsProcessingOutputNumber, MIOU="Validation mIoU")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        problem = encoder_problem(self.enum_value(parameters, "ARCH", context),
                                  self.parameterAsString(parameters, "ENCODER", context).strip())
        if problem:
            return self.tr(problem)
        weights = self.parameterAsFile(parameters, "ENCODER_WEIGHTS", context)
        if weights and not Path(weights).is_file():
            return self.tr(f"Encoder weights file {weights} does not exist.")
        return self.folders_problem(parameters, context,
                                    {"DATASET": "dataset", "SYNTHETIC": "synthetic"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        args = ["train-segmenter", self.parameterAsFile(parameters, "DATASET", context),
                "--out", out, "--arch", self.enum_value(parameters, "ARCH", context),
                "--encoder", self.parameterAsString(parameters, "ENCODER", context).strip(),
                "--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context)),
                "--patience", str(self.parameterAsInt(parameters, "PATIENCE", context)),
                "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        synthetic = self.parameterAsFile(parameters, "SYNTHETIC", context)
        if synthetic:
            args += ["--synthetic", synthetic,
                     "--ratio", repr(self.parameterAsDouble(parameters, "RATIO", context))]
        args += self.optional_args(parameters, context, {
            "BATCH_SIZE": "--batch-size", "MINUTES": "--minutes",
            "ENCODER_WEIGHTS": "--encoder-weights", "MIXED_PRECISION": "--mixed-precision",
            "DEVICE": "--device"})
        outputs = self.engine(args, feedback)
        self.push_number(feedback, outputs.get("miou"), "Validation mIoU: {:.3f}")
        return {"OUTPUT": out, "MODEL": str(outputs.get("model") or out),
                "MIOU": outputs.get("miou"), **self.engine_files(outputs, METRICS="metrics")}
