"""Layers the engine cannot open are written to a temporary GeoTIFF, georeference intact; the
layers the engine writes are loaded with the style it wrote beside them."""

from __future__ import annotations

import numpy as np
from conftest import (
    EPSG,
    ORIGIN,
    make_tiny_segmenter,
    project_layer,
    run_alg,
    scene_arrays,
    write_geotiff,
)
from dock_fixtures import CLASS_TABLE, write_image
from osgeo import gdal
from qgis.core import (
    QgsCategorizedSymbolRenderer,
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


def test_predicted_polygons_are_loaded_with_the_engines_categorized_style(
        provider, engine_python, tmp_path):
    """Segment raster's class polygons, named unlike the raster, come with their own copy of the
    engine's class style (zones.qml), which the plugin loads: categorized on class_id with the
    class table's names and colours, not a style the plugin builds from config.json."""
    model = make_tiny_segmenter(engine_python, tmp_path / "segmenter", CLASS_TABLE)
    image = write_image(tmp_path / "image.tif", 64)
    results, _ = run_alg("satsynth:segment_raster", {
        "MODEL": str(model), "INPUT": str(image), "TILE": 64, "OVERLAP": 16, "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "pred.tif"), "OUTPUT_VECTOR": str(tmp_path / "zones.gpkg")},
        load=True)
    assert (tmp_path / "zones.qml").is_file() and (tmp_path / "pred.qml").is_file()
    polygons = project_layer(results["OUTPUT_VECTOR"])
    assert polygons is not None and polygons.featureCount() > 0
    renderer = polygons.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "class_id"
    assert {str(c.value()): (c.label(), c.symbol().color().name())
            for c in renderer.categories()} == {
        "1": ("water", "#1f78b4"), "2": ("field", "#b2df8a"), "3": ("building", "#e31a1c")}
    # every polygon falls in a category (the ids the engine wrote are the style's)
    values = {str(f["class_id"]) for f in polygons.getFeatures()}
    assert values and values <= {str(c.value()) for c in renderer.categories()}
