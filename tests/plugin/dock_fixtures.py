"""Data and helpers for the dock's tests: a small georeferenced scene written with GDAL/OGR.

The scene: a 3-band uint8 GeoTIFF (EPSG:32633, 1 m pixels) showing water on the left, a field in
the middle and buildings on the right, the matching label raster (ids 1..3, with a paletted
style), and a GeoPackage of the same classes as polygons with a text field ``landcover``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from conftest import ORIGIN, write_geotiff, write_label_polygons
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

CLASSES = {1: ("water", (31, 120, 180)), 2: ("field", (178, 223, 138)),
           3: ("building", (227, 26, 28))}
#: The same classes as a class table (``ClassTable.from_dict``'s form).
CLASS_TABLE = [{"id": cid, "name": name, "color": list(color)}
               for cid, (name, color) in CLASSES.items()]


def class_map(size: int) -> np.ndarray:
    """Class ids by pixel: three vertical bands (water | field | building)."""
    labels = np.full((size, size), 2, dtype=np.uint8)
    labels[:, : size // 3] = 1
    labels[:, 2 * size // 3:] = 3
    return labels


def write_image(path: Path, size: int = 96, seed: int = 0) -> Path:
    """A 3-band uint8 GeoTIFF whose colours follow :func:`class_map`, with some noise."""
    rng = np.random.default_rng(seed)
    labels = class_map(size)
    rgb = np.zeros((3, size, size), dtype=np.float32)
    for cid, (_name, color) in CLASSES.items():
        for b in range(3):
            rgb[b][labels == cid] = color[b]
    rgb += rng.normal(0, 12, rgb.shape)
    return write_geotiff(path, np.clip(rgb, 0, 255).astype(np.uint8))


def write_label_raster(path: Path, size: int = 96, with_palette: bool = True) -> Path:
    """The class raster (ids 1..3, nodata 0) with a colour table."""
    labels = class_map(size)
    labels[:4, :4] = 0  # a nodata corner: 0 must not become a class
    palette = {cid: (*color, 255) for cid, (_name, color) in CLASSES.items()}
    return write_geotiff(path, labels, nodata=0, color_table=palette if with_palette else None)


def band_polygons(size: int = 96) -> list:
    """One polygon per class band, with the class name (``landcover``) and id (``code``)."""
    x0, y0 = ORIGIN
    bounds = [(0, size // 3), (size // 3, 2 * size // 3), (2 * size // 3, size)]
    return [(f"POLYGON(({x0 + a} {y0}, {x0 + b} {y0}, {x0 + b} {y0 - size}, "
             f"{x0 + a} {y0 - size}, {x0 + a} {y0}))", {"landcover": name, "code": cid})
            for (cid, (name, _c)), (a, b) in zip(CLASSES.items(), bounds, strict=True)]


def load_scene(folder: Path, project: QgsProject, size: int = 96) -> dict:
    """Write the scene and add its three layers to ``project``; returns them by role."""
    image = QgsRasterLayer(str(write_image(folder / "scene image.tif", size)), "scene image")
    labels = QgsRasterLayer(str(write_label_raster(folder / "scene labels.tif", size)),
                            "scene labels")
    gpkg = write_label_polygons(folder / "landcover polygons.gpkg", band_polygons(size),
                                layer="landcover")
    polygons = QgsVectorLayer(f"{gpkg}|layername=landcover", "landcover", "ogr")
    for layer in (image, labels, polygons):
        assert layer.isValid(), layer.source()
    project.addMapLayers([image, labels, polygons])
    return {"image": image, "labels": labels, "polygons": polygons}


def choose_polygons(dock, scene: dict, field: str = "landcover") -> None:
    """Set the dock's labels to the scene's polygons, classes from ``field``."""
    dock.labels_vector_radio.setChecked(True)
    dock.label_vector_combo.setLayer(scene["polygons"])
    dock.field_combo.setField(field)


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Process Qt events until ``predicate()`` is true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QgsApplication.processEvents()
        if predicate():
            return True
        time.sleep(interval)
    QgsApplication.processEvents()
    return bool(predicate())


_ZIP_CACHE: dict[str, Path] = {}


def build_plugin_zip(out_dir: Path) -> Path:
    """Run ``scripts/package_plugin.py`` as ``make package`` does (once per test session)."""
    import subprocess
    import sys

    if "zip" not in _ZIP_CACHE:
        repo = Path(__file__).resolve().parents[2]
        res = subprocess.run([sys.executable, str(repo / "scripts" / "package_plugin.py"),
                              "--out", str(out_dir)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        _ZIP_CACHE["zip"] = Path(res.stdout.strip().splitlines()[-1])
    return _ZIP_CACHE["zip"]
