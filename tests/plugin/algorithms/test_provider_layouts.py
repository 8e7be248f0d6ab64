"""Prepare training chips with a Dataset layout: a downloaded LoveDA folder through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_alg, scene_arrays
from qgis.core import QgsApplication, QgsProcessingContext


def _png(path: Path, array) -> None:
    from osgeo import gdal

    arr = array if array.ndim == 3 else array[None]
    mem = gdal.GetDriverByName("MEM").Create("", arr.shape[2], arr.shape[1], arr.shape[0],
                                             gdal.GDT_Byte)
    for i in range(arr.shape[0]):
        mem.GetRasterBand(i + 1).WriteArray(arr[i])
    path.parent.mkdir(parents=True, exist_ok=True)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)


def _loveda(root: Path) -> Path:
    for i, (split, scene) in enumerate((("Train", "Urban"), ("Train", "Rural"), ("Val", "Urban"))):
        image, labels = scene_arrays(64, seed=i)
        _png(root / split / scene / "images_png" / f"{i}.png", image)
        _png(root / split / scene / "masks_png" / f"{i}.png", labels + 1)  # 1..3; 0 = no-data
    return root


@pytest.mark.parametrize("params,message", [
    ({"DATASET_LAYOUT": "loveda"}, "Choose the downloaded loveda folder"),
    ({"DATASET_LAYOUT": "loveda", "DATASET_FOLDER": "{tmp}/LoveDA", "IMAGE": "{image}"},
     "leave Image raster"),
    ({}, "Choose an image raster (or a dataset layout"),
], ids=["no-folder", "layout-and-image", "neither"])
def test_layout_parameters_are_checked(scene, provider, tmp_path, params, message):
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:prepare_chips")
    (tmp_path / "LoveDA").mkdir()
    values = {k: v.format(tmp=tmp_path, image=scene["image"]) for k, v in params.items()}
    ok, msg = alg.checkParameterValues({**values, "OUTPUT": str(tmp_path / "x")},
                                       QgsProcessingContext())
    assert not ok and message in msg, msg


def test_prepare_a_downloaded_loveda_folder(engine_python, provider, tmp_path):
    root = _loveda(tmp_path / "LoveDA")
    results, _ = run_alg("satsynth:prepare_chips", {
        "DATASET_LAYOUT": "loveda", "DATASET_FOLDER": str(root), "CHIP_SIZE": 32,
        "OUTPUT": str(tmp_path / "ds")})
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    names = [c["name"] for c in meta["classes"]["classes"]]
    assert names == ["background", "building", "road", "water", "barren", "forest", "agriculture"]
    assert results["TRAIN_CHIPS"] == 8 and results["VAL_CHIPS"] == 4  # Val/Urban: 4 chips
    assert results["NUM_CLASSES"] == 7
