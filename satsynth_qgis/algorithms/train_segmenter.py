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
    if arch == tiny and contract.tiny_encoder(encoder) is None:
        return (f"The {tiny} architecture takes an encoder like {example} (width 16, depth 2), "
                f"not '{encoder}'.")
    if arch != tiny and contract.tiny_encoder(encoder) is not None:
        return (f"Encoder '{encoder}' is for the {tiny} architecture; choose e.g. "
                f"{contract.ENCODERS[0]} for the others.")
    return ""


def weights_parameters(alg: SatSynthAlgorithm) -> list[Any]:
    """The encoder's starting weights: none (random), ImageNet, TorchGeo weights named in
    TORCHGEO_WEIGHTS, or a local file (ENCODER_WEIGHTS)."""
    return [
        alg.enum_param("PRETRAINED", "Pretrained encoder weights (none: random, or the file "
                       "below; imagenet; torchgeo: the TorchGeo weights named below)",
                       contract.PRETRAINED, contract.PRETRAINED[0]),
        QgsProcessingParameterString("TORCHGEO_WEIGHTS", alg.tr(
            f"TorchGeo weights (with torchgeo), e.g. {contract.TORCHGEO_SUGGESTED}"), "",
            optional=True),
        QgsProcessingParameterFile("ENCODER_WEIGHTS", alg.tr(
            "Encoder weights (a local .safetensors or .pth file)"), compat.FILE_FILE,
            optional=True, fileFilter="Weights (*.safetensors *.pth *.pt)"),
    ]


def encoder_weights(alg: SatSynthAlgorithm, parameters: dict[str, Any],
                    context: QgsProcessingContext) -> tuple[str, str]:
    """(the ``--encoder-weights`` value, '' for random; why the choice is wrong, '' if not)."""
    choice = alg.enum_value(parameters, "PRETRAINED", context) or contract.PRETRAINED[0]
    name = alg.parameterAsString(parameters, "TORCHGEO_WEIGHTS", context).strip()
    path = alg.parameterAsFile(parameters, "ENCODER_WEIGHTS", context)
    if path and choice != contract.PRETRAINED[0]:
        return "", f"Choose either {choice} weights or a weights file ({path}), not both."
    if path:
        return path, "" if Path(path).is_file() else f"Encoder weights file {path} does not exist."
    if choice == "torchgeo":
        name = name.removeprefix(contract.TORCHGEO_PREFIX)
        if not name:
            return "", ("TorchGeo weights: give the weights' name, e.g. "
                        f"{contract.TORCHGEO_SUGGESTED}.")
        return contract.TORCHGEO_PREFIX + name, ""
    return ("" if choice == contract.PRETRAINED[0] else choice), ""


class TrainSegmenter(SatSynthAlgorithm):
    """Trains a semantic segmentation model on the real training chips of a dataset, optionally
    mixed with synthetic pairs: Ratio R adds R synthetic pairs per real pair (the paper's |D'| = R
    |D|). Validation always uses real chips only, and the model with the best validation mIoU is
    kept.

    Architecture: fpn (the paper's), unet, deeplabv3plus, pspnet, segformer (use encoder mit_b0), or
    tiny (a small conv net for quick CPU checks; its encoder reads e.g. w16d2). Encoders start from
    random weights unless 'Pretrained encoder weights' says imagenet (the encoder's ImageNet
    weights, as the paper's segmenters) or torchgeo (TorchGeo's RGB ResNet weights named in
    'TorchGeo weights', e.g. ResNet50_Weights.FMOW_RGB_GASSL with encoder resnet50), or 'Encoder
    weights' names a local file (.safetensors or .pth). Named weights are read from their cache:
    the first run downloads them (or Set up engine fetches them); offline, the log says how to
    copy them over. The model then scales its input as the weights expect. Mixed precision: auto
    (the default) computes in bf16 on CPUs with AVX512-BF16 or AMX and on GPUs with bf16, fp16 on
    other tensor-core GPUs, float32 elsewhere; the weights stay float32.

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
            *weights_parameters(self),
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
        problem = encoder_weights(self, parameters, context)[1]
        if problem:
            return self.tr(problem)
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
            "MIXED_PRECISION": "--mixed-precision", "DEVICE": "--device"})
        weights = encoder_weights(self, parameters, context)[0]
        if weights:
            args += ["--encoder-weights", weights]
        outputs = self.engine(args, feedback)
        self.push_number(feedback, outputs.get("miou"), "Validation mIoU: {:.3f}")
        return {"OUTPUT": out, "MODEL": str(outputs.get("model") or out),
                "MIOU": outputs.get("miou"), **self.engine_files(outputs, METRICS="metrics")}
