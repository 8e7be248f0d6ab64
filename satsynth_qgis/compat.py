"""Enums that moved between QGIS 3.22, 3.40 and QGIS 4 (Qt6), resolved once at import.

QGIS 3.36 moved the Processing enums into ``Qgis`` (``Qgis.ProcessingSourceType.Raster`` ...) and
QGIS 4 drops the old class-scoped names (``QgsProcessing.TypeRaster`` ...). Every algorithm takes
these constants from here, so a single file decides which spelling the running QGIS understands.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
)


def _pick(new_enum: str, new_member: str, old_owner: Any, old_name: str) -> Any:
    """``Qgis.<new_enum>.<new_member>`` when this QGIS has it, else ``old_owner.<old_name>``."""
    scoped = getattr(Qgis, new_enum, None)
    if scoped is not None and hasattr(scoped, new_member):
        return getattr(scoped, new_member)
    return getattr(old_owner, old_name)


# QgsProcessingParameterNumber types
NUMBER_INTEGER = _pick("ProcessingNumberParameterType", "Integer", QgsProcessingParameterNumber, "Integer")
NUMBER_DOUBLE = _pick("ProcessingNumberParameterType", "Double", QgsProcessingParameterNumber, "Double")

# Layer/source types (QgsProcessing.SourceType)
TYPE_RASTER = _pick("ProcessingSourceType", "Raster", QgsProcessing, "TypeRaster")
TYPE_VECTOR_ANY = _pick("ProcessingSourceType", "VectorAnyGeometry", QgsProcessing, "TypeVectorAnyGeometry")
TYPE_VECTOR_POLYGON = _pick("ProcessingSourceType", "VectorPolygon", QgsProcessing, "TypeVectorPolygon")

# QgsProcessingParameterFile behaviour
FILE_FILE = _pick("ProcessingFileParameterBehavior", "File", QgsProcessingParameterFile, "File")
FILE_FOLDER = _pick("ProcessingFileParameterBehavior", "Folder", QgsProcessingParameterFile, "Folder")

# QgsProcessingParameterField data types
FIELD_ANY = _pick("ProcessingFieldParameterDataType", "Any", QgsProcessingParameterField, "Any")

# Parameter flags
PARAM_ADVANCED = _pick("ProcessingParameterFlag", "Advanced", QgsProcessingParameterDefinition, "FlagAdvanced")

# Raster data provider capability "has its own pixel grid" and the raster writer's success code
RASTER_HAS_SIZE = _pick("RasterInterfaceCapability", "Size", QgsRasterDataProvider, "Size")
RASTER_WRITER_OK = _pick("RasterFileWriterResult", "Success", QgsRasterFileWriter, "NoError")


def advanced(param: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    """Mark ``param`` as an advanced parameter (collapsed by default in the dialog)."""
    param.setFlags(param.flags() | PARAM_ADVANCED)
    return param

