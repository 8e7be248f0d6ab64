"""Export segmenter: a trained segmenter as an ONNX model (satsynth export).

``satsynth export SEG --format onnx --out MODEL.onnx --tile T --overlap O``.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterFileDestination,
)

from .base import AlgorithmInfo, SatSynthAlgorithm


class ExportSegmenter(SatSynthAlgorithm):
    """Writes a trained segmenter as an ONNX model for tiles of the given size and any batch size,
    checked against the PyTorch model before it is kept. The file carries the class table, the
    normalization, the band count, training pixel size, CRS and tile size, and the metadata the
    Deepness plugin reads (model type Segmentor, class names, resolution in cm/px, tile size,
    overlap in percent, input standardization), so it loads in Deepness with the right classes and
    scale; ONNX Runtime and other tools load it too.

    Input: tiles normalized as Segment raster does; output: class probabilities.
    """

    INFO = AlgorithmInfo("export_segmenter", "Export segmenter to ONNX", group="prediction",
                         icon="segment", output_kind="file", output_inputs=("MODEL",))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("MODEL"))
        self.add_tiling_parameters("Overlap between tiles, recorded for Deepness (pixels)")
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", self.tr("ONNX model"), self.tr("ONNX models (*.onnx)")))

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        problem = self.tiling_problem(parameters, context)
        if problem:
            return problem
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if out and not out.lower().endswith(".onnx"):
            return self.tr("The ONNX model needs a file name ending in .onnx.")
        return self.folders_problem(parameters, context, {"MODEL": "segmenter"})

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        model = self.parameterAsFile(parameters, "MODEL", context)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["export", model, "--format", "onnx", "--out", out,
                "--tile", str(self.parameterAsInt(parameters, "TILE", context)),
                "--overlap", str(self.parameterAsInt(parameters, "OVERLAP", context))]
        outputs = self.engine(args, feedback)
        return {"OUTPUT": str(outputs.get("model") or out)}
