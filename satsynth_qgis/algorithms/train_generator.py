"""Train joint generator: a diffusion model of image chips and label masks (satsynth train-generator).

``satsynth train-generator DATASET --out MODEL``.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterNumber,
)

from .. import compat
from ..contract import contract
from .base import AlgorithmInfo, SatSynthAlgorithm

#: RECIPE "default": the product's recipe with the preset and conditioning chosen here; "paper":
#: the engine's --recipe paper (its own preset and conditioning; the two choices here are not sent)


class TrainGenerator(SatSynthAlgorithm):
    """Trains a denoising diffusion model (SatSynth, CVPR 2024) on the image chips and their label
    masks together, so that it can later sample new, consistent image-mask pairs.

    Preset: tiny (about 1 M parameters, for CPU trials), small, or base (paper scale, needs a GPU).
    Steps: optimizer steps (0 = the engine's default of 2000); Time budget: stop cleanly after this
    many minutes (0 = no limit), whichever comes first. Training on a CPU is slow: use tiny and a
    few hundred steps to try things out.

    Conditioning (advanced): class-shares (default) also teaches the model each chip's class mix, so
    that synthesized pairs keep the real class mix and 'Favor classes' can ask for more of a rare
    class; none is the paper's unconditional model.

    Recipe: default (the product's, tuned for fast convergence) or paper: SatSynth (CVPR 2024) as
    published, in one switch: analog bits, epsilon prediction, a linear noise schedule, no SNR
    weighting, no class conditioning, the base UNet on 128 x 128 px chips (other chip sizes are
    refused; prepare with chip size 128). With paper, the preset and conditioning chosen here are
    not used, and Synthesize samples such a model with DDPM's 1000 steps unless told otherwise. It
    needs a GPU.

    Mixed precision (advanced): auto (the default) computes in bf16 on CPUs with AVX512-BF16 or
    AMX and on GPUs with bf16 (about 1.5x more training per CPU minute), fp16 on other tensor-core
    GPUs, float32 elsewhere; the weights stay float32.

    Train at chip size (advanced; 0 = the chips' size): train on the chips shrunk to this size
    (image averaged, mask by majority class), e.g. 32 on 64 or 128 px chips: the base of a
    super-resolution cascade with 'Train upsampler'.

    Outputs: the generator folder, the training log (CSV) and a loss plot (PNG).
    """

    INFO = AlgorithmInfo("train_generator", "Train joint generator", group="generator",
                         icon="train_generator", output_kind="generator",
                         output_inputs=("DATASET",))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("DATASET"))
        d = contract.GeneratorTrainFields()
        self.addParameter(self.enum_param("RECIPE", "Recipe", contract.RECIPES, d.recipe))
        self.add_budget_parameters()
        self.add_advanced(
            self.enum_param("CONDITION", "Conditioning", contract.CONDITIONS, d.condition),
            self.enum_param("MIXED_PRECISION",
                            "Mixed precision (auto: bf16 where the CPU or GPU has it)",
                            contract.MIXED_PRECISIONS, d.mixed_precision),
            QgsProcessingParameterNumber("SIZE", self.tr(
                "Train at chip size (px, 0 = the chips' size)"), compat.NUMBER_INTEGER, 0,
                minValue=0),
            QgsProcessingParameterNumber("SEED", self.tr("Random seed"), compat.NUMBER_INTEGER,
                                         d.seed, minValue=0),
        )
        self.add_training_outputs("GENERATOR", "Generator folder")

    # --- shared with Train upsampler ------------------------------------------------------------
    def add_budget_parameters(self) -> None:
        """Preset, steps, time budget, batch size and device."""
        self.addParameter(self.preset_param("PRESET", "Model size preset"))
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

    def add_training_outputs(self, folder: str, description: str) -> None:
        """The model folder (destination and output ``folder``), the log and the loss plot."""
        self.add_output_folder(description, folder)
        self.add_outputs(QgsProcessingOutputFile, LOG="Training log (CSV)",
                         LOSS_PLOT="Loss plot (PNG)")
        self.add_outputs(QgsProcessingOutputNumber, STEPS_DONE="Steps trained")

    def train(self, args: list[str], out: str, folder: str, parameters: dict[str, Any],
              context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """Run a training command (plus the budget and device arguments given; 0 = the
        engine's default) and map its outputs."""
        args = args + self.optional_args(parameters, context, {
            "STEPS": "--steps", "BATCH_SIZE": "--batch-size", "MINUTES": "--minutes",
            "DEVICE": "--device"})
        outputs = self.engine(args, feedback)
        if outputs.get("interrupted"):
            feedback.pushWarning("Training stopped early (time budget); the checkpoint is usable.")
        return {"OUTPUT": out, folder: str(outputs.get("model") or out),
                "STEPS_DONE": outputs.get("steps"),
                **self.engine_files(outputs, LOG="log", LOSS_PLOT="loss_plot")}

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        return self.folders_problem(parameters, context, {"DATASET": "dataset"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        args = ["train-generator", self.parameterAsFile(parameters, "DATASET", context),
                "--out", out, "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        recipe = self.enum_value(parameters, "RECIPE", context)
        if recipe == "paper":  # the recipe chooses the preset and conditioning
            args += ["--recipe", recipe]
        else:
            args += ["--preset", self.enum_value(parameters, "PRESET", context),
                     "--condition", self.enum_value(parameters, "CONDITION", context)]
        args += self.optional_args(parameters, context, {"MIXED_PRECISION": "--mixed-precision",
                                                         "SIZE": "--size"})
        return self.train(args, out, "GENERATOR", parameters, context, feedback)
