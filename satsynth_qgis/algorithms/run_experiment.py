"""Does synthetic data help? mIoU against the synthetic ratio R over seeds (satsynth experiment).

``satsynth experiment DATASET --generator GEN --ratios ... --seeds N --out EXP``.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputHtml,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .. import compat
from ..contract import contract
from .base import AlgorithmInfo, SatSynthAlgorithm
from .train_segmenter import encoder_problem, encoder_weights, weights_parameters


def parse_ratios(text: str) -> list[float] | None:
    """The contract's rule ('2, 0, 1' -> [0.0, 1.0, 2.0], sorted, unique, finite, >= 0); None
    when the text is not such a list."""
    try:
        return contract.parse_ratios(text)
    except contract.ContractError:
        return None


class RunExperiment(SatSynthAlgorithm):
    """Answers the question the product exists for, on your data: for each ratio R (synthetic pairs
    per real pair) and each seed, it trains a segmenter on the real chips plus R times as many
    synthetic pairs from the generator, selects it on the real validation chips and scores it on the
    held-out real chips (the test split when the dataset has one), and compares it with the
    real-only run of the same seed. The HTML report (shown in the Results Viewer) has the plot and
    the table: mIoU per R, the paired difference to R=0 with its 95 % interval, the smallest
    difference the seeds could detect, the seeds that would detect 0.02, the reading (better,
    worse, or cannot tell when the interval holds 0 and 0.02 was out of reach), and per-class
    changes; the panel's log repeats each reading.

    Ratios: comma separated, 0 is the real-only baseline (always run). Seeds: runs per ratio; 3 or
    more give an interval. Every run sees the same real chips at every step, the synthetic pairs
    coming on top of them. Budget: steps (every run makes the same number of optimizer steps),
    epochs (validated after each pass over the real chips), or converge (each run trains until its
    validation mIoU stops improving, then anneals its learning rate and reports the average of its
    last weights). Real fraction: train on this share of the
    real chips (the low-data setting where synthetic pairs help most). Variants (advanced), comma
    separated: mix (default), pretrain (synthetic first, then real fine-tuning), tstr (synthetic
    only), filtered and filtered-pretrain (only the half of the synthetic pairs that the real-only
    segmenter of the same seed finds most consistent with their masks), mix-realbn (as mix, the
    batch-norm statistics of the models scored re-estimated on the real chips) and mix-weighted
    (as mix, each synthetic pixel counting half a real one in the loss), and real-repeat (the
    control: real training chips again in place of the synthetic ones, the same compute as mix;
    with a subset made by satsynth subset and real fraction 1); an unknown name is refused
    with the list the engine knows. Upsampler folder (advanced): make the synthetic pairs through
    the super-resolution cascade, the generator being its base. Pretrained encoder weights
    (advanced): every run's encoder starts from them (none, imagenet, TorchGeo weights or a file,
    as in Train segmenter).

    Resumable: every finished run is kept in the experiment folder (runs.json) and the synthetic
    pairs are cached there. Cancel at any time; run it again with the same experiment folder and it
    does only the runs that are missing. Each run's progress shows in the bar.
    """

    INFO = AlgorithmInfo("run_experiment", "Does synthetic data help? (experiment)",
                         group="segmenter", icon="evaluate", output_kind="experiment",
                         output_inputs=("DATASET", "GENERATOR", "UPSAMPLER", "ENCODER_WEIGHTS"),
                         output_into=True)  # the same folder again resumes the experiment

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        d = contract.ExperimentFields()
        self.addParameter(self.stage_folder_param("DATASET"))
        self.addParameter(self.folder_param(
            "GENERATOR", "Generator folder (from Train joint generator; needed for R > 0)",
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            "RATIOS", self.tr("Synthetic pairs per real pair R (comma separated)"),
            ",".join(f"{r:g}" for r in d.ratios)))
        self.addParameter(QgsProcessingParameterNumber(
            "SEEDS", self.tr("Seeds (runs per ratio)"), compat.NUMBER_INTEGER, d.seeds,
            minValue=1))
        self.addParameter(self.enum_param("BUDGET", "Training budget per run", contract.BUDGETS,
                                          d.budget))
        self.addParameter(QgsProcessingParameterNumber(
            "REAL_FRACTION", self.tr("Fraction of the real training chips used"),
            compat.NUMBER_DOUBLE, d.real_fraction, minValue=0.001, maxValue=1.0))
        self.addParameter(self.enum_param("ARCH", "Segmenter architecture",
                                          contract.ARCHITECTURES, d.arch))
        self.addParameter(QgsProcessingParameterString("ENCODER", self.tr("Encoder"), d.encoder))
        self.addParameter(QgsProcessingParameterNumber(
            "EPOCHS", self.tr("Epochs per run (over the real chips)"), compat.NUMBER_INTEGER,
            d.epochs, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Batch size (0 = engine default)"), compat.NUMBER_INTEGER, 0,
            minValue=0))
        self.addParameter(self.device_param())
        self.add_advanced(
            QgsProcessingParameterString("VARIANTS", self.tr(
                f"Variants: how synthetic pairs are used ({', '.join(contract.VARIANTS)})"),
                ",".join(d.variants)),
            QgsProcessingParameterNumber("VAL_EVERY", self.tr(
                "Validate every N optimizer steps (0 = one pass over the real chips)"),
                compat.NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterNumber("PATIENCE", self.tr(
                "Stop a run after this many validations without a better mIoU (0 = never)"),
                compat.NUMBER_INTEGER, d.patience, minValue=0),
            QgsProcessingParameterNumber("MINUTES_PER_RUN", self.tr(
                "Time budget per run in minutes (0 = none)"), compat.NUMBER_DOUBLE, 0.0,
                minValue=0.0),
            QgsProcessingParameterNumber("COUNT_PER_REAL", self.tr(
                "Synthetic pairs to make per real chip (0 = the largest R)"),
                compat.NUMBER_DOUBLE, 0.0, minValue=0.0),
            self.sampler_param(),
            QgsProcessingParameterNumber("SAMPLER_STEPS", self.tr("Sampler steps (dpm, ddim)"),
                                         compat.NUMBER_INTEGER, d.steps, minValue=1),
            self.folder_param("UPSAMPLER", "Upsampler folder (from Train upsampler): make the "
                              "synthetic pairs through the cascade", optional=True),
            *weights_parameters(self),
        )
        self.add_output_folder("Experiment folder (the same folder resumes)")
        self.add_outputs(QgsProcessingOutputHtml, REPORT_HTML="Experiment report")
        self.add_outputs(QgsProcessingOutputFile, RESULTS="Results (JSON)",
                         TABLE="Table (Markdown)", PLOT="Plot (PNG)")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        text = self.parameterAsString(parameters, "RATIOS", context)
        ratios = parse_ratios(text)
        if ratios is None:
            return self.tr(f"Ratios must be numbers >= 0 separated by commas (e.g. 0,1,2), not "
                           f"'{text}'.")
        if max(ratios) > 0 and not self.parameterAsFile(parameters, "GENERATOR", context):
            return self.tr("Ratios above 0 need a generator folder (from Train joint "
                           "generator); with only R = 0 there is nothing to compare.")
        problem = encoder_problem(self.enum_value(parameters, "ARCH", context),
                                  self.parameterAsString(parameters, "ENCODER", context).strip())
        if problem:
            return self.tr(problem)
        problem = encoder_weights(self, parameters, context)[1]
        if problem:
            return self.tr(problem)
        if (self.parameterAsFile(parameters, "UPSAMPLER", context)
                and not self.parameterAsFile(parameters, "GENERATOR", context)):
            return self.tr("An upsampler folder needs a generator folder: the cascade's base "
                           "generator (trained with Train at chip size = the upsampler's base "
                           "size).")
        return self.folders_problem(parameters, context,
                                    {"DATASET": "dataset", "GENERATOR": "generator",
                                     "UPSAMPLER": "upsampler"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        ratios = parse_ratios(self.parameterAsString(parameters, "RATIOS", context)) or [0.0]
        args = ["experiment", self.parameterAsFile(parameters, "DATASET", context),
                "--out", out, "--ratios", ",".join(f"{r:g}" for r in ratios),
                "--seeds", str(self.parameterAsInt(parameters, "SEEDS", context)),
                "--budget", self.enum_value(parameters, "BUDGET", context),
                "--real-fraction", repr(self.parameterAsDouble(parameters, "REAL_FRACTION",
                                                               context)),
                "--arch", self.enum_value(parameters, "ARCH", context),
                "--encoder", self.parameterAsString(parameters, "ENCODER", context).strip(),
                "--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context)),
                "--patience", str(self.parameterAsInt(parameters, "PATIENCE", context)),
                "--variants", self.parameterAsString(parameters, "VARIANTS", context).replace(
                    " ", "") or ",".join(contract.ExperimentFields().variants)]
        generator = self.parameterAsFile(parameters, "GENERATOR", context)
        if generator and max(ratios) > 0:
            args += ["--generator", generator,
                     *self.optional_args(parameters, context, {"SAMPLER": "--sampler"}),
                     "--steps", str(self.parameterAsInt(parameters, "SAMPLER_STEPS", context)),
                     *self.optional_args(parameters, context, {"UPSAMPLER": "--upsampler"})]
        args += self.optional_args(parameters, context, {
            "BATCH_SIZE": "--batch-size", "VAL_EVERY": "--val-every",
            "MINUTES_PER_RUN": "--minutes-per-run", "COUNT_PER_REAL": "--count-per-real",
            "DEVICE": "--device"})
        weights = encoder_weights(self, parameters, context)[0]
        if weights:
            args += ["--encoder-weights", weights]
        feedback.pushInfo("Runs already in the experiment folder are kept: only the missing "
                          "ones are trained.")
        outputs = self.engine(args, feedback, outer_stage="experiment")
        return {"OUTPUT": out, **self.engine_files(outputs, REPORT_HTML="report_html",
                                                   RESULTS="results", TABLE="table",
                                                   PLOT="plot")}
