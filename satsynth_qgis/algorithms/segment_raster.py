"""Segment raster: apply a trained segmenter to a raster of any size (satsynth predict).

``satsynth predict SEG --image IMG --out PRED.tif [...]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRectangle,
)

from .. import compat, layers
from ..contract import contract
from ..folders import model_config
from ..styling import ClassStylePostProcessor
from .base import AlgorithmInfo, SatSynthAlgorithm, tiling_bounds


class SegmentRaster(SatSynthAlgorithm):
    """Applies a trained segmenter to a raster layer of any size with overlapping, smoothly blended
    windows (memory depends on the tile size, not on the raster's area). Writes a GeoTIFF of class
    ids on the input's grid and CRS, loaded and styled with the class names and colours.

    Extent: only segment this box. AOI mask: only segment inside these polygons (nodata outside).
    Tile and overlap are in pixels. Optional outputs: a confidence raster (top class probability x
    255) and class polygons (GeoPackage with class_id, class_name, area_m2).

    The input must have the bands the segmenter was trained on, in the same order. Web and database
    layers are first written to a temporary GeoTIFF over the extent.

    Runtime (advanced): auto runs the model through ONNX Runtime on a CPU (faster than PyTorch
    there, see docs/predict.md; exported into the segmenter folder on first use) and PyTorch on a
    GPU; torch or onnx force one.
    """

    INFO = AlgorithmInfo("segment_raster", "Segment raster", group="prediction", icon="segment",
                         output_kind="file", output_inputs=("MODEL", "INPUT", "AOI"))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(self.stage_folder_param("MODEL"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster to segment")))
        self.addParameter(QgsProcessingParameterExtent(
            "EXTENT", self.tr("Extent (default: the whole raster)"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", self.tr("Area of interest mask (polygons)"), [compat.TYPE_VECTOR_POLYGON],
            optional=True))
        self.add_tiling_parameters("Overlap between tiles (pixels)")
        self.addParameter(self.device_param())
        self.add_advanced(
            QgsProcessingParameterNumber("BATCH", self.tr("Tiles per batch (0: the device's "
                                                          "default)"),
                                         compat.NUMBER_INTEGER, contract.PredictFields.batch,
                                         **tiling_bounds("batch")),
            self.enum_param("RUNTIME", "Runtime", contract.RUNTIMES,
                            contract.PredictFields.runtime),
            QgsProcessingParameterBoolean(
                "MATCH_RESOLUTION",
                self.tr("Resample to the training pixel size on the fly"), False),
            QgsProcessingParameterNumber(
                "MIN_AREA", self.tr("Drop polygons smaller than (m²)"), compat.NUMBER_DOUBLE, 0.0,
                minValue=0.0),
        )
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT", self.tr("Classified raster")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_CONFIDENCE", self.tr("Confidence raster"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_VECTOR", self.tr("Class polygons"), compat.TYPE_VECTOR_POLYGON,
            optional=True, createByDefault=False))

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        problem = self.tiling_problem(parameters, context) or self.folders_problem(
            parameters, context, {"MODEL": "segmenter"})
        if problem:
            return problem
        model = Path(self.parameterAsFile(parameters, "MODEL", context))
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        bands = model_config(model).get("in_channels")
        if layer is not None and layer.isValid() and isinstance(bands, int) \
                and layers.raster_file(layer) is not None and layer.bandCount() != bands:
            return self.tr(f"The segmenter was trained on {bands}-band images, but "
                           f"'{layer.name()}' has {layer.bandCount()} bands.")
        if layer is not None and layer.isValid() and parameters.get("EXTENT") not in (None, ""):
            extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
            if not extent.isNull() and not extent.intersects(layer.extent()):
                return self.tr(f"The extent does not overlap the raster '{layer.name()}'.")
        return ""

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        model = self.parameterAsFile(parameters, "MODEL", context)
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, "INPUT"))
        extent = QgsRectangle()
        if parameters.get("EXTENT") not in (None, ""):
            extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        image = layers.raster_to_file(layer, context, feedback,
                                      extent if not extent.isNull() else None, layer.crs())
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["predict", model, "--image", image, "--out", out,
                "--tile", str(self.parameterAsInt(parameters, "TILE", context)),
                "--overlap", str(self.parameterAsInt(parameters, "OVERLAP", context)),
                "--batch", str(self.parameterAsInt(parameters, "BATCH", context))]
        if not extent.isNull() and not extent.isEmpty():
            args += ["--extent", ",".join(repr(v) for v in (
                extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()))]
        if parameters.get("AOI") not in (None, ""):
            mask = self.parameterAsCompatibleSourceLayerPath(
                parameters, "AOI", context, layers.ENGINE_VECTOR_FORMATS, "gpkg", feedback)
            if not mask:
                raise QgsProcessingException(self.invalidSourceError(parameters, "AOI"))
            args += ["--mask", mask]
        confidence = self.parameterAsOutputLayer(parameters, "OUTPUT_CONFIDENCE", context)
        if confidence:
            args += ["--confidence", confidence]
        vector = self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context)
        if vector:
            args += ["--vector", vector,
                     *self.optional_args(parameters, context, {"MIN_AREA": "--min-area"})]
        args += self.optional_args(parameters, context, {"MATCH_RESOLUTION": "--match-resolution",
                                                         "DEVICE": "--device",
                                                         "RUNTIME": "--runtime"})

        outputs = self.engine(args, feedback)
        prediction = str(outputs.get("prediction") or out)
        for layer in (prediction, vector):  # styled with the style the engine wrote
            if layer and context.willLoadLayerOnCompletion(layer):
                details = context.layerToLoadOnCompletionDetails(layer)
                details.setPostProcessor(ClassStylePostProcessor.create())
        results = {"OUTPUT": prediction}
        if confidence:
            results["OUTPUT_CONFIDENCE"] = str(outputs.get("confidence") or confidence)
        if vector:
            results["OUTPUT_VECTOR"] = str(outputs.get("vector") or vector)
        return results

