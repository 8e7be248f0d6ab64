"""Prepare training chips: cut an image and its labels into georeferenced chips (satsynth prepare).

``satsynth prepare`` on one image and its labels (a class raster or a vector layer).
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .. import compat, layers
from ..contract import contract
from ..styling import ChipSplitPostProcessor
from .base import AlgorithmInfo, SatSynthAlgorithm

#: prepare's defaults and accepted ranges (the contract's PrepareFields).
PREP = contract.PrepareFields()


def prep_bounds(name: str) -> dict[str, Any]:
    """A Processing number parameter's minValue/maxValue for a PrepareFields field."""
    low, high = contract.field_bounds(contract.PrepareFields, name)
    return {k: v for k, v in (("minValue", low), ("maxValue", high)) if v is not None}
#: The engine's ``prepare --layout`` names (satsynth.data.layouts), "none" for image + labels.
NO_LAYOUT = "none"
LAYOUTS = [NO_LAYOUT, *contract.LAYOUTS]


def add_label_inputs(alg: SatSynthAlgorithm, image_optional: bool = False) -> None:
    """Declare the image and its labels (a class-id raster, or polygons + class field, and an
    optional class table file): shared by Prepare training chips and Run full pipeline."""
    alg.addParameter(QgsProcessingParameterRasterLayer("IMAGE", alg.tr("Image raster"),
                                                       optional=image_optional))
    alg.addParameter(QgsProcessingParameterRasterLayer(
        "LABELS", alg.tr("Labels raster (class ids)"), optional=True))
    alg.addParameter(QgsProcessingParameterFeatureSource(
        "VECTOR", alg.tr("Label polygons (instead of a labels raster)"),
        [compat.TYPE_VECTOR_ANY], optional=True))
    alg.addParameter(QgsProcessingParameterField(
        "CLASS_FIELD", alg.tr("Class field (name or id of each feature's class)"),
        parentLayerParameterName="VECTOR", type=compat.FIELD_ANY, optional=True))
    alg.addParameter(QgsProcessingParameterFile(
        "CLASSES", alg.tr("Class table file (JSON/YAML: id, name, colour)"),
        behavior=compat.FILE_FILE, fileFilter="Class tables (*.json *.yaml *.yml)",
        optional=True))


class PrepareChips(SatSynthAlgorithm):
    """Cuts an image raster and its labels into square chips that keep their georeference, splits
    them into training and validation chips by spatial blocks, and writes a dataset folder for the
    generator and the segmenter.

    Labels are either a single-band raster of class ids (Labels raster) or a vector layer with a
    class field (Label polygons + Class field; 'Selected features only' is honoured). Without a
    class table file, classes are inferred from the label values or the field's values. Class table
    file: JSON or YAML, e.g. {"classes": [{"id": 1, "name": "water", "color": "#1f78b4"}]}.

    Dataset layout: instead of an image and its labels, a published dataset folder as downloaded
    (LoveDA: Train/Val x Urban/Rural x images_png + masks_png; OpenEarthMap: region folders with
    images/ and labels/ GeoTIFFs and train.txt/val.txt; iSAID: train/val with P0000.png images and
    P0000_instance_color_RGB.png semantic masks), read with its own class table and official
    train/val split.

    Labels raster drawn on the image's pixels: a labels raster of the image's exact size without
    georeference (an annotation tool's export) takes the image's grid; it is refused when the sizes
    differ.

    Outputs: the dataset folder and a layer of chip footprints (train/val), which is loaded.
    """

    INFO = AlgorithmInfo("prepare_chips", "Prepare training chips", group="data", icon="prepare",
                         output_kind="dataset",
                         output_inputs=("IMAGE", "LABELS", "VECTOR", "CLASSES", "DATASET_FOLDER"))

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        add_label_inputs(self, image_optional=True)
        self.addParameter(QgsProcessingParameterBoolean(
            "LABELS_ON_IMAGE_GRID", self.tr("Labels raster drawn on the image's pixels (same "
                                            "size, no georeference)"), False))
        self.addParameter(self.enum_param(
            "DATASET_LAYOUT", "Dataset layout (a downloaded dataset instead of image + labels)",
            LAYOUTS, NO_LAYOUT))
        self.addParameter(self.folder_param(
            "DATASET_FOLDER", "Dataset folder as downloaded (for a dataset layout)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "CHIP_SIZE", self.tr("Chip size (pixels)"), compat.NUMBER_INTEGER, PREP.chip_size,
            **prep_bounds("chip_size")))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE", self.tr("Stride between chips (pixels, 0 = chip size)"),
            compat.NUMBER_INTEGER, 0, minValue=0, maxValue=prep_bounds("stride")["maxValue"]))
        self.addParameter(QgsProcessingParameterNumber(
            "VAL_FRACTION", self.tr("Validation fraction"), compat.NUMBER_DOUBLE,
            PREP.val_fraction, **prep_bounds("val_fraction")))
        self.add_advanced(
            QgsProcessingParameterNumber(
                "LINE_BUFFER", self.tr("Buffer for line/point labels (metres, 0 = 1 pixel wide)"),
                compat.NUMBER_DOUBLE, PREP.line_buffer, **prep_bounds("line_buffer")),
            QgsProcessingParameterBoolean(
                "ALL_TOUCHED", self.tr("Burn every pixel a feature touches"), PREP.all_touched),
            QgsProcessingParameterString(
                "BACKGROUND", self.tr("Class name for pixels no feature covers"), PREP.background,
                optional=True),
            QgsProcessingParameterBoolean(
                "BACKGROUND_IGNORE", self.tr("Do not train on pixels no feature covers"), False),
            QgsProcessingParameterNumber(
                "MIN_LABELED", self.tr("Skip chips with a smaller labelled fraction"),
                compat.NUMBER_DOUBLE, PREP.min_labeled, **prep_bounds("min_labeled")),
            QgsProcessingParameterNumber(
                "BLOCK_SIZE", self.tr("Spatial split block side (chips)"), compat.NUMBER_INTEGER,
                PREP.block_size, **prep_bounds("block_size")),
            QgsProcessingParameterNumber(
                "MAX_CHIPS", self.tr("Keep at most this many chips (0 = all)"),
                compat.NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterNumber(
                "SEED", self.tr("Random seed of the split"), compat.NUMBER_INTEGER, PREP.seed,
                minValue=0),
        )
        self.add_output_folder("Dataset folder", "DATASET")
        self.add_outputs(QgsProcessingOutputVectorLayer, CHIPS="Chip footprints")
        self.add_outputs(QgsProcessingOutputNumber, TRAIN_CHIPS="Training chips",
                         VAL_CHIPS="Validation chips", NUM_CLASSES="Number of classes")

    def values_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        layout = self.enum_value(parameters, "DATASET_LAYOUT", context)
        if layout != NO_LAYOUT:
            if not self.parameterAsFile(parameters, "DATASET_FOLDER", context):
                return self.tr(f"Choose the downloaded {layout} folder (Dataset folder).")
            if any(_given(parameters, n) for n in ("IMAGE", "LABELS", "VECTOR", "CLASSES")):
                return self.tr("A dataset layout reads the images, masks and class table from "
                               "the dataset folder: leave Image raster, Labels, Label polygons "
                               "and Class table file empty.")
            return ""
        if not _given(parameters, "IMAGE"):
            return self.tr("Choose an image raster (or a dataset layout and its folder).")
        has_labels = _given(parameters, "LABELS")
        has_vector = _given(parameters, "VECTOR")
        if has_labels == has_vector:
            return self.tr("Give the labels either as a labels raster or as label polygons with "
                           "a class field, not both and not neither.")
        if has_vector and not self.parameterAsString(parameters, "CLASS_FIELD", context):
            return self.tr("Label polygons need a class field: the attribute that holds each "
                           "feature's class name or id.")
        image = self.parameterAsRasterLayer(parameters, "IMAGE", context)
        chip = self.parameterAsInt(parameters, "CHIP_SIZE", context)
        if image is not None and image.isValid() and image.width() > 0:
            if chip > min(image.width(), image.height()):
                return self.tr(
                    f"The chip size ({chip} px) is larger than the image "
                    f"'{image.name()}' ({image.width()} x {image.height()} px): "
                    "choose a smaller chip size.")
        if has_labels:
            labels = self.parameterAsRasterLayer(parameters, "LABELS", context)
            if labels is not None and labels.isValid() and labels.bandCount() != 1:
                return self.tr(
                    f"The labels raster '{labels.name()}' has {labels.bandCount()} bands; it must "
                    "have a single band of class ids (use label polygons for other data).")
            if (self.parameterAsBoolean(parameters, "LABELS_ON_IMAGE_GRID", context)
                    and labels is not None and image is not None and labels.isValid()
                    and image.isValid() and (labels.width(), labels.height())
                    != (image.width(), image.height())):
                return self.tr(
                    f"'Labels raster drawn on the image's pixels' needs the labels to have the "
                    f"image's size: '{labels.name()}' is {labels.width()} x {labels.height()} px, "
                    f"'{image.name()}' {image.width()} x {image.height()} px.")
        if (self.parameterAsBoolean(parameters, "BACKGROUND_IGNORE", context)
                and self.parameterAsString(parameters, "BACKGROUND", context) not in ("", "background")):
            return self.tr("Choose either a background class name or 'do not train on pixels "
                           "no feature covers', not both.")
        stride = self.parameterAsInt(parameters, "STRIDE", context)
        if stride and stride > 4 * chip:
            return self.tr(f"A stride of {stride} px skips most of the image with {chip} px "
                           f"chips; use at most {4 * chip}.")
        return ""

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = self.output_folder(parameters, context)
        layout = self.enum_value(parameters, "DATASET_LAYOUT", context)
        if layout != NO_LAYOUT:
            args = ["prepare", "--folder",
                    self.parameterAsFile(parameters, "DATASET_FOLDER", context), "--layout",
                    layout, "--out", out]
        else:
            args = ["prepare", *self._label_args(parameters, context, feedback), "--out", out]
        args += ["--chip-size", str(self.parameterAsInt(parameters, "CHIP_SIZE", context)),
                 *self.optional_args(parameters, context, {"STRIDE": "--stride"}),
                 "--val-fraction", repr(self.parameterAsDouble(parameters, "VAL_FRACTION", context)),
                 "--min-labeled", repr(self.parameterAsDouble(parameters, "MIN_LABELED", context)),
                 "--block-size", str(self.parameterAsInt(parameters, "BLOCK_SIZE", context)),
                 "--seed", str(self.parameterAsInt(parameters, "SEED", context)),
                 *self.optional_args(parameters, context, {"MAX_CHIPS": "--max-chips"})]

        outputs = self.engine(args, feedback)
        chips = str(outputs.get("chips") or "")
        if chips:
            self.load_on_completion(context, chips, self.tr("Chip footprints"), "CHIPS",
                                    raster=False, post_processor=ChipSplitPostProcessor.create())
        return {
            "OUTPUT": out,
            "DATASET": str(outputs.get("dataset") or out),
            "CHIPS": chips,
            "TRAIN_CHIPS": outputs.get("train"),
            "VAL_CHIPS": outputs.get("val"),
            "NUM_CLASSES": outputs.get("classes"),
        }

    def _label_args(self, parameters: dict[str, Any], context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> list[str]:
        """The engine arguments for the image, its labels (raster or polygons) and class table."""
        image = self.parameterAsRasterLayer(parameters, "IMAGE", context)
        if image is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, "IMAGE"))
        args = ["--image", layers.raster_to_file(image, context, feedback)]
        if _given(parameters, "LABELS"):
            labels = self.parameterAsRasterLayer(parameters, "LABELS", context)
            if labels is None:
                raise QgsProcessingException(self.invalidRasterError(parameters, "LABELS"))
            args += ["--labels", layers.raster_to_file(labels, context, feedback),
                     *self.optional_args(parameters, context,
                                         {"LABELS_ON_IMAGE_GRID": "--labels-on-image-grid"})]
        else:
            path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, "VECTOR", context, layers.ENGINE_VECTOR_FORMATS, "gpkg", feedback)
            if not path:
                raise QgsProcessingException(self.invalidSourceError(parameters, "VECTOR"))
            args += ["--vector", path]
            if layer_name:
                args += ["--layer", layer_name]
            # a background name other than the default is refused with BACKGROUND_IGNORE
            args += ["--class-field", self.parameterAsString(parameters, "CLASS_FIELD", context),
                     *self.optional_args(parameters, context, {
                         "LINE_BUFFER": "--line-buffer", "ALL_TOUCHED": "--all-touched",
                         "BACKGROUND_IGNORE": "--background-ignore",
                         "BACKGROUND": "--background"})]
        return args + self.optional_args(parameters, context, {"CLASSES": "--classes"})


def _given(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name)
    return value is not None and value != ""
