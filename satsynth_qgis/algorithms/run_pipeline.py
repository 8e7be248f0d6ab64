"""Run full pipeline: image + labels in; chips, generator, synthetic pairs, segmenter, report and
a styled prediction out, by running the stage algorithms one after the other.

prepare -> train generator -> synthesize -> train segmenter -> evaluate -> segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingMultiStepFeedback,
    QgsProcessingOutputFolder,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .. import compat
from ..contract import contract
from ..styling import ClassStylePostProcessor
from .base import AlgorithmInfo, SatSynthAlgorithm, tiling_bounds
from .prepare_chips import PrepareChips, add_label_inputs, prep_bounds

#: Parameters handed unchanged to Prepare training chips.
PREPARE_INPUTS = ("IMAGE", "LABELS", "VECTOR", "CLASS_FIELD", "CLASSES", "CHIP_SIZE")


class RunPipeline(SatSynthAlgorithm):
    """Runs every stage in one go on an image and its labels: prepares chips, trains the joint
    generator, synthesizes image-mask pairs, trains a segmenter on real plus synthetic pairs (R
    synthetic per real), evaluates it on the validation chips and segments the image (or another
    raster). Each stage's folder is written under the output folder (dataset, generator, synthetic,
    segmenter, evaluation, prediction.tif).

    Set the number of synthetic pairs or R to 0 to train on real chips only (no generator). The
    defaults are small enough for a first try on a CPU; for real work use the 'small' or 'base'
    preset and more steps on a GPU.
    """

    INFO = AlgorithmInfo("run_pipeline", "Run full pipeline", group="pipeline",
                         icon="run_pipeline")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        seg, predict = contract.SegmenterTrainFields(), contract.PredictFields()
        add_label_inputs(self)
        self.addParameter(QgsProcessingParameterNumber(
            "CHIP_SIZE", self.tr("Chip size (pixels)"), compat.NUMBER_INTEGER, 64,
            **prep_bounds("chip_size")))
        self.addParameter(self.preset_param("GENERATOR_PRESET", "Generator size preset"))
        self.addParameter(QgsProcessingParameterNumber(
            "GENERATOR_STEPS", self.tr("Generator training steps"), compat.NUMBER_INTEGER, 500,
            minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "COUNT", self.tr("Synthetic pairs to sample (0 = real chips only)"),
            compat.NUMBER_INTEGER, 64, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "RATIO", self.tr("Synthetic pairs per real pair R (0 = real chips only)"),
            compat.NUMBER_DOUBLE, 1.0, minValue=0.0, maxValue=100.0))
        self.addParameter(self.enum_param("ARCH", "Segmenter architecture",
                                          contract.ARCHITECTURES, seg.arch))
        self.addParameter(QgsProcessingParameterString("ENCODER", self.tr("Encoder"), seg.encoder))
        self.addParameter(QgsProcessingParameterNumber(
            "EPOCHS", self.tr("Segmenter epochs"), compat.NUMBER_INTEGER, 10, minValue=1))
        self.addParameter(self.device_param())
        self.add_advanced(
            QgsProcessingParameterRasterLayer(
                "SEGMENT_INPUT", self.tr("Raster to segment at the end (default: the image)"),
                optional=True),
            QgsProcessingParameterNumber("SAMPLER_STEPS", self.tr("Sampling steps"),
                                         compat.NUMBER_INTEGER, contract.SynthesizeFields.steps,
                                         minValue=1, maxValue=1000),
            QgsProcessingParameterNumber("BATCH_SIZE", self.tr("Batch size (0 = engine default)"),
                                         compat.NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterNumber("TILE", self.tr("Prediction tile size (pixels)"),
                                         compat.NUMBER_INTEGER, predict.tile,
                                         **tiling_bounds("tile")),
            QgsProcessingParameterNumber("OVERLAP", self.tr("Prediction tile overlap (pixels)"),
                                         compat.NUMBER_INTEGER, predict.overlap,
                                         **tiling_bounds("overlap")),
            QgsProcessingParameterNumber("SEED", self.tr("Random seed"), compat.NUMBER_INTEGER,
                                         seg.seed, minValue=0),
        )
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Output folder (one sub-folder per stage)")))
        self.add_outputs(QgsProcessingOutputFolder, DATASET="Dataset folder",
                         GENERATOR="Generator folder", SYNTHETIC="Synthetic folder",
                         SEGMENTER="Segmenter folder")
        self.add_outputs(QgsProcessingOutputHtml, REPORT_HTML="Evaluation report")
        self.add_outputs(QgsProcessingOutputNumber, MIOU="Validation mIoU")
        self.add_outputs(QgsProcessingOutputRasterLayer, PREDICTION="Prediction")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        prepare = PrepareChips()
        prepare.initAlgorithm()
        values = {k: parameters[k] for k in PREPARE_INPUTS if k in parameters}
        values["OUTPUT"] = "unused"
        ok, msg = prepare.checkParameterValues(values, context)
        if not ok:
            return msg
        return self.tiling_problem(parameters, context)

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        import processing  # QGIS's Processing plugin (present in QGIS and qgis_process)

        root = Path(self.folder_value(self.parameterAsString(parameters, "OUTPUT_FOLDER", context)))
        root.mkdir(parents=True, exist_ok=True)
        synthetic_on = (self.parameterAsInt(parameters, "COUNT", context) > 0
                        and self.parameterAsDouble(parameters, "RATIO", context) > 0)
        steps = 6 if synthetic_on else 4
        multi = QgsProcessingMultiStepFeedback(steps, feedback)
        device = self.enum_value(parameters, "DEVICE", context)
        seed = self.parameterAsInt(parameters, "SEED", context)
        batch = self.parameterAsInt(parameters, "BATCH_SIZE", context)
        step = 0

        def run(alg: str, params: dict[str, Any], title: str) -> dict[str, Any]:
            nonlocal step
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Cancelled."))
            multi.setCurrentStep(step)
            feedback.pushInfo(f"\n=== Step {step + 1}/{steps}: {title}")
            step += 1
            return processing.run(f"satsynth:{alg}", params, context=context, feedback=multi,
                                  is_child_algorithm=True)

        prep = {k: parameters[k] for k in PREPARE_INPUTS if parameters.get(k) not in (None, "")}
        prep.update({"SEED": seed, "OUTPUT": str(root / "dataset")})
        dataset = run("prepare_chips", prep, "prepare training chips")["DATASET"]
        results: dict[str, Any] = {"DATASET": dataset, "GENERATOR": "", "SYNTHETIC": ""}
        seg_params = {
            "DATASET": dataset, "ARCH": self.enum_value(parameters, "ARCH", context),
            "ENCODER": self.parameterAsString(parameters, "ENCODER", context),
            "EPOCHS": self.parameterAsInt(parameters, "EPOCHS", context), "BATCH_SIZE": batch,
            "DEVICE": device, "SEED": seed, "OUTPUT": str(root / "segmenter")}
        if synthetic_on:
            generator = run("train_generator", {
                "DATASET": dataset,
                "PRESET": self.enum_value(parameters, "GENERATOR_PRESET", context),
                "STEPS": self.parameterAsInt(parameters, "GENERATOR_STEPS", context),
                "BATCH_SIZE": batch, "DEVICE": device, "SEED": seed,
                "OUTPUT": str(root / "generator")}, "train the joint generator")["GENERATOR"]
            synthetic = run("synthesize", {
                "GENERATOR": generator, "COUNT": self.parameterAsInt(parameters, "COUNT", context),
                "STEPS": self.parameterAsInt(parameters, "SAMPLER_STEPS", context),
                "SEED": seed, "DEVICE": device, "OUTPUT": str(root / "synthetic")},
                "synthesize image-mask pairs")["SYNTHETIC"]
            results.update({"GENERATOR": generator, "SYNTHETIC": synthetic})
            seg_params.update({"SYNTHETIC": synthetic,
                               "RATIO": self.parameterAsDouble(parameters, "RATIO", context)})
        segmenter = run("train_segmenter", seg_params, "train the segmenter")
        report = run("evaluate_segmenter", {
            "MODEL": segmenter["MODEL"], "DATASET": dataset, "DEVICE": device,
            "OUTPUT": str(root / "evaluation")}, "evaluate on the validation chips")
        target = parameters.get("SEGMENT_INPUT")
        prediction = root / "prediction.tif"
        predicted = run("segment_raster", {
            "MODEL": segmenter["MODEL"],
            "INPUT": target if target not in (None, "") else parameters["IMAGE"],
            "TILE": self.parameterAsInt(parameters, "TILE", context),
            "OVERLAP": self.parameterAsInt(parameters, "OVERLAP", context),
            "DEVICE": device, "OUTPUT": str(prediction)}, "segment the raster")["OUTPUT"]
        multi.setCurrentStep(steps)
        self.load_on_completion(context, predicted, self.tr("Prediction"), "PREDICTION",
                                raster=True, post_processor=ClassStylePostProcessor.create())
        results.update({"OUTPUT_FOLDER": str(root), "SEGMENTER": segmenter["MODEL"],
                        "MIOU": report.get("MIOU"), "REPORT_HTML": report.get("REPORT_HTML"),
                        "PREDICTION": predicted})
        return results
