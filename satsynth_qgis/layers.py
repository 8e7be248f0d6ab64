"""Layers to files the engine can open.

File-based rasters and vectors are passed by path (with the GeoPackage layer name for vectors).
Anything else (web layers, database rasters, GeoPackage raster tables, memory layers, a
"selected features only" subset) is first written to a temporary GeoTIFF or GeoPackage, over the
requested extent for rasters.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

from . import compat

#: Raster formats the engine (rasterio/GDAL) opens by path.
ENGINE_RASTER_EXTENSIONS = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".jpeg",
                            ".asc", ".nc", ".hdf", ".h5", ".bil", ".dat", ".ecw", ".sid"}
#: Vector formats the engine (pyogrio) reads, as QGIS spells them (lower-case extensions).
ENGINE_VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "fgb", "gml", "kml", "sqlite"]
#: Largest side, in pixels, of a web layer (WMS/XYZ) rendered for the engine.
WEB_LAYER_MAX_PIXELS = 4096


def raster_file(layer: QgsRasterLayer) -> str | None:
    """The layer's file path when the engine can open it directly, else None."""
    if layer is None or layer.providerType() != "gdal":
        return None
    source = layer.source()
    if "|" in source:  # GDAL open options, sub-datasets: let QGIS decode them
        return None
    path = Path(source)
    if path.is_file() and path.suffix.lower() in ENGINE_RASTER_EXTENSIONS:
        return str(path)
    return None


def _temp_path(stem: str, suffix: str) -> str:
    folder = Path(QgsProcessingUtils.tempFolder())
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{stem}_{uuid.uuid4().hex[:8]}{suffix}")


def raster_to_file(layer: QgsRasterLayer, context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback | None = None,
                   extent: QgsRectangle | None = None,
                   extent_crs: QgsCoordinateReferenceSystem | None = None) -> str:
    """A path the engine can open for ``layer``: its own file, or a temporary GeoTIFF of it
    (over ``extent`` when given, at the layer's resolution) for any other kind of layer."""
    if layer is None or not layer.isValid():
        raise QgsProcessingException("The raster layer is missing or invalid.")
    direct = raster_file(layer)
    if direct is not None:
        return direct
    provider: QgsRasterDataProvider = layer.dataProvider()
    crs = layer.crs()
    area = QgsRectangle(layer.extent())
    if extent is not None and not extent.isNull() and not extent.isEmpty():
        wanted = QgsRectangle(extent)
        if extent_crs is not None and extent_crs.isValid() and extent_crs != crs:
            transform = QgsCoordinateTransform(extent_crs, crs, context.transformContext())
            wanted = transform.transformBoundingBox(wanted)
        area = area.intersect(wanted) if _has_native_size(provider) else wanted
        if area.isEmpty():
            raise QgsProcessingException(
                f"The requested extent does not overlap the layer '{layer.name()}'.")
    if _has_native_size(provider):
        xres, yres = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    else:  # web layers have no pixel grid of their own
        if extent is None or extent.isNull() or extent.isEmpty():
            raise QgsProcessingException(
                f"'{layer.name()}' is a web or service layer without its own pixel grid: "
                "choose an extent (e.g. the map canvas) so it can be downloaded for the engine.")
        xres = yres = max(area.width(), area.height()) / WEB_LAYER_MAX_PIXELS
        if feedback is not None:
            feedback.pushInfo(f"Rendering '{layer.name()}' at {xres:.3g} map units per pixel "
                              f"(at most {WEB_LAYER_MAX_PIXELS} px a side).")
    cols = max(1, int(math.ceil(area.width() / xres)))
    rows = max(1, int(math.ceil(area.height() / yres)))
    out = _temp_path("satsynth_raster", ".tif")
    if feedback is not None:
        feedback.pushInfo(f"Writing '{layer.name()}' ({layer.providerType()}) to a temporary "
                          f"GeoTIFF for the engine: {cols} x {rows} px -> {out}")
    writer = QgsRasterFileWriter(out)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES", "BIGTIFF=IF_SAFER"])
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(f"Cannot read the raster layer '{layer.name()}'.")
    err = writer.writeRaster(pipe, cols, rows, area, crs, context.transformContext())
    if err != compat.RASTER_WRITER_OK or not os.path.isfile(out):
        raise QgsProcessingException(
            f"Could not write '{layer.name()}' to a temporary GeoTIFF (error {int(err)}).")
    return out


def _has_native_size(provider: QgsRasterDataProvider) -> bool:
    return bool(provider.capabilities() & compat.RASTER_HAS_SIZE)

