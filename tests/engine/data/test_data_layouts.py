"""prepare --layout: LoveDA, OpenEarthMap and iSAID folders as they are downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasters import write_raster

from satsynth.data.layouts import LAYOUTS, find_layout_pairs
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError

S = 64  # image side; chips of 32 px


def _png(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_raster(path, data, crs=None, driver="PNG")


def _stripes(values: list[int]) -> np.ndarray:
    """(S, S) uint8 label raster of horizontal stripes, one per value."""
    rows = np.array_split(np.arange(S), len(values))
    lab = np.zeros((S, S), np.uint8)
    for v, r in zip(values, rows, strict=True):
        lab[r] = v
    return lab


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 255, (3, S, S), dtype=np.uint8)


def _all_labels(store: ChipStore) -> np.ndarray:
    return np.concatenate([store.split(s, final_evaluation=True).labels.ravel()
                           for s in ("train", "val", "test") if store.meta.counts.get(s)])


def _val_sources(store: ChipStore) -> set[str]:
    return {Path(s["image"]).parent.parent.name + "/" + Path(s["image"]).name
            for s in store.meta.sources if s["chips"]["val"]}


def test_loveda_ids_no_data_and_official_split(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "LoveDA"
    for split, scene, name, values in (("Train", "Urban", "1", [2, 3, 0, 4]),
                                       ("Train", "Rural", "2", [7, 6, 5, 1]),
                                       ("Val", "Urban", "3", [2, 2, 1, 1]),
                                       ("Test", "Rural", "4", None)):
        _png(root / split / scene / "images_png" / f"{name}.png", _image(rng))
        if values is not None:
            _png(root / split / scene / "masks_png" / f"{name}.png", _stripes(values))
    out = prepare_dataset(tmp_path / "ds", folder=root, layout="loveda", chip_size=32,
                          min_labeled=0.1)
    store = ChipStore(out)
    table = store.meta.classes
    assert table.names == ["background", "building", "road", "water", "barren", "forest",
                           "agriculture"]
    assert table.ids == [1, 2, 3, 4, 5, 6, 7] and table.classes[1].hex() == "#ff0000"
    assert store.meta.crs is None
    # the Test scene (no published masks) is not read; Val/Urban/3 is all of validation
    assert len(store.meta.sources) == 3
    assert _val_sources(store) == {"Urban/3.png"} and store.meta.counts["val"] == 4
    labels = _all_labels(store)
    # value 0 (no-data) becomes ignore; ids 1..7 become indices 0..6
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5, 6, 255}
    val = store.split("val").labels
    assert set(np.unique(val)) == {0, 1}  # background, building
    assert (labels == 255).sum() == S * S // 4


def _oem_region(root: Path, region: str, n: int, crs: CRS, rng: np.random.Generator) -> None:
    for i in range(1, n + 1):
        t = Affine(0.5, 0, 500_000 + 1000 * i, 0, -0.5, 4_000_000)
        for sub, data in (("images", _image(rng)), ("labels", _stripes([0, 1, 5, 8]))):
            (root / region / sub).mkdir(parents=True, exist_ok=True)
            write_raster(root / region / sub / f"{region}_{i}.tif", data, crs=crs, transform=t)


def test_openearthmap_split_lists_codes_and_mixed_crs_in_pixel_space(tmp_path, caplog):
    rng = np.random.default_rng(1)
    root = tmp_path / "OpenEarthMap"
    _oem_region(root, "aachen", 3, CRS.from_epsg(32632), rng)
    _oem_region(root, "austin", 2, CRS.from_epsg(32614), rng)
    (root / "train.txt").write_text("aachen_1.tif\naachen_2.tif\naustin_1.tif\n")
    (root / "val.txt").write_text("austin_2.tif\n")
    (root / "test.txt").write_text("aachen_3.tif\n")
    caplog.set_level("INFO", logger="satsynth")
    out = prepare_dataset(tmp_path / "ds", folder=root, layout="openearthmap", chip_size=32,
                          min_labeled=0.1)
    store = ChipStore(out)
    assert store.meta.classes.names[:3] == ["bareland", "rangeland", "developed space"]
    assert store.meta.classes.ids == list(range(1, 9))
    assert store.meta.crs is None  # two UTM zones: one dataset cannot hold both
    assert "different CRSs" in caplog.text
    assert _val_sources(store) == {"austin/austin_2.tif"}
    # test.txt: the locked test split, whole
    tests = [Path(s["image"]).name for s in store.meta.sources if s["test_source"]]
    assert tests == ["aachen_3.tif"] and store.count("test") == 4
    labels = _all_labels(store)
    # ids 1, 5, 8 are bareland, tree, building (indices 0, 4, 7); 0 = unknown is ignored
    assert set(np.unique(labels)) == {0, 4, 7, 255}


def test_openearthmap_one_crs_keeps_the_georeference_without_split_lists(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "oem"
    _oem_region(root, "tokyo", 4, CRS.from_epsg(32654), rng)
    out = prepare_dataset(tmp_path / "ds", folder=root, layout="openearthmap", chip_size=32,
                          block_size=1, val_fraction=0.25, min_labeled=0.1)
    store = ChipStore(out)
    assert store.meta.crs == "EPSG:32654"
    assert store.meta.counts["val"] > 0 and store.meta.counts["train"] > 0
    t = store.split("train").transforms[0]
    assert t[0] == 0.5 and t[2] >= 501_000


def test_isaid_colour_masks_named_after_the_image(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "iSAID"
    table = LAYOUTS["isaid"].table()
    colours = {c.name: c.color for c in table.classes}
    for split, name, classes in (("train", "P0000", ["background", "ship", "plane", "harbor"]),
                                 ("train", "P0001", ["small vehicle", "background",
                                                     "swimming pool", "large vehicle"]),
                                 ("val", "P0002", ["background", "storage tank", "bridge",
                                                   "background"])):
        _png(root / split / "images" / "images" / f"{name}.png", _image(rng))
        mask = np.zeros((3, S, S), np.uint8)
        rows = np.array_split(np.arange(S), 4)
        for cls, r in zip(classes, rows, strict=True):
            mask[:, r] = np.asarray(colours[cls], np.uint8)[:, None, None]
        _png(root / split / "Semantic_masks" / "images" / f"{name}_instance_color_RGB.png",
             mask)
        # instance-id masks sit beside them in the instance archives: never read as labels
        _png(root / split / "Instance_masks" / "images" / f"{name}_instance_id_RGB.png",
             rng.integers(0, 255, (3, S, S), dtype=np.uint8))
    _png(root / "test" / "images" / "images" / "P0003.png", _image(rng))
    pairs, _ = find_layout_pairs("isaid", root)
    assert [(p.image.name, p.labels.name, p.split) for p in pairs] == [
        ("P0000.png", "P0000_instance_color_RGB.png", "train"),
        ("P0001.png", "P0001_instance_color_RGB.png", "train"),
        ("P0002.png", "P0002_instance_color_RGB.png", "val")]
    store = ChipStore(prepare_dataset(tmp_path / "ds", folder=root, layout="isaid",
                                      chip_size=32))
    assert store.meta.classes.num_classes == 16
    idx = {n: i for i, n in enumerate(store.meta.classes.names)}
    val = store.split("val").labels
    assert set(np.unique(val)) == {idx["background"], idx["storage tank"], idx["bridge"]}
    train = store.split("train").labels
    assert set(np.unique(train)) == {idx[n] for n in ("background", "ship", "plane", "harbor",
                                                      "small vehicle", "swimming pool",
                                                      "large vehicle")}


def test_layout_errors_are_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SatSynthError, match="no LoveDA image/mask pairs found: expected Train/"):
        prepare_dataset(tmp_path / "ds", folder=tmp_path / "empty", layout="loveda")
    with pytest.raises(SatSynthError, match="unknown dataset layout 'deepglobe'"):
        prepare_dataset(tmp_path / "ds", folder=tmp_path / "empty", layout="deepglobe")
    with pytest.raises(SatSynthError, match="own class table"):
        prepare_dataset(tmp_path / "ds", folder=tmp_path / "empty", layout="isaid",
                        classes=tmp_path / "c.json")


def test_cli_prepare_layout(tmp_path):
    from satsynth.cli import main

    rng = np.random.default_rng(4)
    root = tmp_path / "LoveDA"
    for split, name in (("Train", "1"), ("Val", "2")):
        _png(root / split / "Urban" / "images_png" / f"{name}.png", _image(rng))
        _png(root / split / "Urban" / "masks_png" / f"{name}.png", _stripes([1, 2, 3, 4]))
    assert main(["prepare", "--folder", str(root), "--layout", "loveda", "--chip-size", "32",
                 "--out", str(tmp_path / "ds"), "--progress", "quiet"]) == 0
    assert ChipStore(tmp_path / "ds").meta.counts == {"train": 4, "val": 4}
