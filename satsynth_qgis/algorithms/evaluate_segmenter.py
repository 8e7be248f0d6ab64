"""Evaluate segmenter: mIoU, per-class IoU and confusion on reference labels (satsynth evaluate).

``satsynth evaluate SEG (--dataset DS | --image IMG --labels LBL) --out REPORT``.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterRasterLayer,
)

from .. import layers
from .base import AlgorithmInfo, SatSynthAlgorithm


class EvaluateSegmenter(SatSynthAlgorithm):
    """Scores a trained segmenter against reference labels: mean IoU, per-class IoU and F1, overall
    accuracy and a confusion matrix, written as an HTML report (shown in the Results Viewer), JSON
    and Markdown.

    Reference: either a dataset folder (its validation chips) or an image raster with its labels
    raster of class ids (the whole image is segmented and compared).
    """

    INFO = AlgorithmInfo("evaluate_segmenter", "Evaluate segmenter", group="segmenter",
                         icon="evaluate", output_kind="evaluation",
                         output_inputs=("MODEL", "DATASET", "IMAGE", "LABELS"), output_into=True)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("MODEL"))
        self.addParameter(self.folder_param(
            "DATASET", "Dataset folder (its validation chips are the reference)", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "IMAGE", self.tr("Image raster (instead of a dataset)"), optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "LABELS", self.tr("Reference labels raster for the image"), optional=True))
        self.addParameter(self.device_param())
        self.add_output_folder("Report folder")
        self.add_outputs(QgsProcessingOutputHtml, REPORT_HTML="Evaluation report")
        self.add_outputs(QgsProcessingOutputFile, REPORT_JSON="Evaluation report (JSON)")
        self.add_outputs(QgsProcessingOutputNumber, MIOU="Mean IoU")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        has_dataset = bool(self.parameterAsFile(parameters, "DATASET", context))
        has_image = parameters.get("IMAGE") not in (None, "")
        has_labels = parameters.get("LABELS") not in (None, "")
        if has_dataset == (has_image or has_labels):
            return self.tr("Give the reference either as a dataset folder or as an image with "
                           "its labels raster, not both and not neither.")
        if has_image != has_labels:
            return self.tr("An image needs its reference labels raster (and labels need their "
                           "image).")
        if has_labels:
            labels = self.parameterAsRasterLayer(parameters, "LABELS", context)
            if labels is not None and labels.isValid() and labels.bandCount() != 1:
                return self.tr(f"The labels raster '{labels.name()}' has {labels.bandCount()} "
                               "bands; it must have a single band of class ids.")
        return self.folders_problem(parameters, context,
                                    {"MODEL": "segmenter", "DATASET": "dataset"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        args = ["evaluate", self.parameterAsFile(parameters, "MODEL", context), "--out", out]
        dataset = self.parameterAsFile(parameters, "DATASET", context)
        if dataset:
            args += ["--dataset", dataset]
        else:
            image = self.parameterAsRasterLayer(parameters, "IMAGE", context)
            labels = self.parameterAsRasterLayer(parameters, "LABELS", context)
            if image is None or labels is None:
                raise QgsProcessingException(self.tr("The image or its labels raster is invalid."))
            args += ["--image", layers.raster_to_file(image, context, feedback),
                     "--labels", layers.raster_to_file(labels, context, feedback)]
        args += self.optional_args(parameters, context, {"DEVICE": "--device"})
        outputs = self.engine(args, feedback)
        self.push_number(feedback, outputs.get("miou"), "Mean IoU: {:.3f}")
        return {"OUTPUT": out, "MIOU": outputs.get("miou"),
                **self.engine_files(outputs, REPORT_HTML="report_html", REPORT_JSON="report_json")}
