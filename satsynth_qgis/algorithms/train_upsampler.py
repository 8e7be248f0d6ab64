"""Train upsampler: the super-resolution stage of the cascade (satsynth train-upsampler).

``satsynth train-upsampler DATASET --base-size B --factor F --out UPSAMPLER`` (the
budget parameters, outputs and checks are Train joint generator's).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProcessingParameterNumber

from .. import compat
from ..contract import contract
from .train_generator import TrainGenerator

FACTORS = [str(f) for f in contract.UPSAMPLER_FACTORS]


class TrainUpsampler(TrainGenerator):
    """Trains the super-resolution stage of the SatSynth cascade: a diffusion model that draws an
    image-mask pair of Base size x Factor pixels given the same pair at Base size (the real chips
    shrunk: image averaged, mask by majority class). The base generator then only has to learn the
    layout at low resolution and the upsampler adds the detail.

    Use it with a generator trained on the same dataset with 'Train at chip size' = Base size:
    Synthesize with this folder as 'Upsampler folder' writes pairs of Base size x Factor pixels.
    Base size x Factor must divide the dataset's chip size (chips larger than that are shrunk to
    it).

    Preset, Steps and Time budget as in 'Train joint generator'.

    Outputs: the upsampler folder, the training log (CSV) and a loss plot (PNG).
    """

    INFO = replace(TrainGenerator.INFO, alg_id="train_upsampler", display="Train upsampler",
                   output_kind="upsampler")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("DATASET"))
        self.addParameter(QgsProcessingParameterNumber(
            "BASE_SIZE", self.tr("Base size (px, the generator's chip size)"),
            compat.NUMBER_INTEGER, 32, minValue=8))
        self.addParameter(self.enum_param("FACTOR", "Upsampling factor", FACTORS, FACTORS[0]))
        self.add_budget_parameters()
        self.addParameter(compat.advanced(QgsProcessingParameterNumber(
            "SEED", self.tr("Random seed"), compat.NUMBER_INTEGER,
            contract.GeneratorTrainFields.seed, minValue=0)))
        self.add_training_outputs("UPSAMPLER", "Upsampler folder")

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        args = ["train-upsampler", self.parameterAsFile(parameters, "DATASET", context),
                "--out", out,
                "--base-size", str(self.parameterAsInt(parameters, "BASE_SIZE", context)),
                "--factor", self.enum_value(parameters, "FACTOR", context),
                "--preset", self.enum_value(parameters, "PRESET", context),
                "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        return self.train(args, out, "UPSAMPLER", parameters, context, feedback)
