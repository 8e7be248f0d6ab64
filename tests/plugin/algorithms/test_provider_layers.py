"""Layers the engine cannot open are written to a temporary GeoTIFF, georeference intact."""

from __future__ import annotations

import numpy as np
from conftest import EPSG, ORIGIN, scene_arrays, write_geotiff
from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingContext,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)

from satsynth_qgis import layers


def test_file_rasters_are_passed_by_path(tmp_path):
    image, _ = scene_arrays(64)
    path = write_geotiff(tmp_path / "image.tif", image)
    layer = QgsRasterLayer(str(path), "image")
    assert layers.raster_to_file(layer, QgsProcessingContext()) == str(path)


def test_geopackage_raster_table_is_written_to_geotiff_over_the_extent(tmp_path):
    image, _ = scene_arrays(64)
    tif = write_geotiff(tmp_path / "image.tif", image)
    gpkg = tmp_path / "rasters.gpkg"
    gdal.Translate(str(gpkg), str(tif), format="GPKG", creationOptions=["RASTER_TABLE=scene"])
    layer = QgsRasterLayer(f"GPKG:{gpkg}:scene", "scene", "gdal")
    assert layer.isValid() and layers.raster_file(layer) is None
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    x0, y0 = ORIGIN
    # a box around pixels 16..48 x 8..40 of the scene, in the layer's CRS
    wanted = QgsRectangle(x0 + 16, y0 - 40, x0 + 48, y0 - 8)
    out = layers.raster_to_file(layer, context, None, wanted,
                                QgsCoordinateReferenceSystem(f"EPSG:{EPSG}"))
    ds = gdal.Open(out)
    assert out.endswith(".tif") and ds.GetDriver().ShortName == "GTiff"
    assert ds.GetGeoTransform() == (x0 + 16, 1.0, 0.0, y0 - 8, 0.0, -1.0)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (32, 32, 3)
    assert QgsRasterLayer(out, "o").crs().authid() == f"EPSG:{EPSG}"
    assert np.array_equal(ds.ReadAsArray(), image[:, 8:40, 16:48])
