"""The other label kinds: vector layers (names, ids, reprojection, line buffers) and folders of
colour masks (RGB and paletted PNG, ignore colour, pixel space)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasters import ORIGIN, write_raster
from shapely.geometry import LineString, box

from satsynth.data.info import dataset_info
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError


def polygons_utm(rng: np.random.Generator, n: int = 25) -> gpd.GeoDataFrame:
    """Random rectangles in the 256 x 256 px (128 m) image area with class names."""
    geoms, names = [], []
    for _ in range(n):
        x, y = rng.uniform(0, 110, 2)
        w, h = rng.uniform(8, 30, 2)
        geoms.append(box(330_000 + x, 2_790_000 - 128 + y, 330_000 + x + w, 2_790_000 - 128 + y + h))
        names.append(["building", "water", "Tree"][int(rng.integers(0, 3))])
    return gpd.GeoDataFrame({"kind": names}, geometry=geoms, crs="EPSG:32640")


def all_labels(store: ChipStore, height: int, width: int, origin=ORIGIN) -> np.ndarray:
    """Reassemble the stored labels (class indices) on the image grid (255 where no chip)."""
    out = np.full((height, width), 255, np.uint8)
    for split in ("train", "val"):
        s = store.split(split)
        for k in range(len(s)):
            col = int(round((s.transforms[k][2] - origin.c) / origin.a))
            row = int(round((s.transforms[k][5] - origin.f) / origin.e))
            size = s.labels.shape[1]
            out[row:row + size, col:col + size] = s.labels[k]
    return out


def test_vector_names_in_epsg4326_are_reprojected_and_rasterized_on_the_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 256, 256)).astype(np.uint8)
    ip = write_raster(tmp_path / "img.tif", img)
    gdf = polygons_utm(rng)
    vp = tmp_path / "labels.gpkg"
    gdf.to_crs("EPSG:4326").to_file(vp, layer="landcover", driver="GPKG")
    gdf.iloc[:3].to_file(vp, layer="other", driver="GPKG")
    out = prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, layer="landcover",
                          class_field="kind", chip_size=64, val_fraction=0.25, block_size=1,
                          min_labeled=0)
    store = ChipStore(out)
    # inferred table: background id 0, then names in alphabetical order
    assert store.classes.names == ["background", "Tree", "building", "water"]
    assert store.classes.ids == [0, 1, 2, 3]
    got = all_labels(store, 256, 256)
    # the reference: the same polygons rasterized directly in UTM (largest first)
    order = np.argsort(-gdf.area.to_numpy(), kind="stable")
    idx = {"Tree": 1, "building": 2, "water": 3}
    ref = rasterize([(gdf.geometry.iloc[i], idx[gdf.kind.iloc[i]]) for i in order],
                    out_shape=(256, 256), transform=ORIGIN, fill=0, dtype="uint8")
    assert (got == ref).mean() > 0.99  # reprojection round trip moves edges by < 1 px
    assert (ref > 0).mean() > 0.2


def test_vector_integer_ids_with_a_class_table_and_ignored_background(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (1, 256, 256)).astype(np.uint8)
    ip = write_raster(tmp_path / "img.tif", img)
    # one block of polygons in the upper left quarter only
    gdf = gpd.GeoDataFrame({"code": [7, 3, "7"]}, geometry=[
        box(330_000, 2_790_000 - 60, 330_000 + 60, 2_790_000),
        box(330_000 + 10, 2_790_000 - 30, 330_000 + 20, 2_790_000 - 20),
        box(330_000 + 40, 2_790_000 - 60, 330_000 + 50, 2_790_000 - 50)], crs="EPSG:32640")
    vp = tmp_path / "labels.geojson"
    gdf.to_file(vp, driver="GeoJSON")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"id": 3, "name": "pool", "color": "#00ffff"},
                                               {"id": 7, "name": "lawn", "color": "#00ff00"}]}))
    out = prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, class_field="code",
                          classes=classes, background=None, chip_size=64, val_fraction=0)
    store = ChipStore(out)
    assert store.classes.names == ["pool", "lawn"]
    # only chips inside the polygons' quarter are labeled enough to be kept
    s = store.split("train")
    assert len(s) == 4
    lab = all_labels(store, 256, 256)
    assert (lab[:120, :120] == 1).mean() > 0.9 and (lab[:128, :128] == 0).sum() == 400
    # uncovered pixels are ignored, not background
    assert (lab[120:128, :128] == 255).all() and (lab[:128, 120:128] == 255).all()
    # the field has ids and names mixed up: a value not in the table is listed
    gdf2 = gdf.assign(code=["7", "3", "pond"])
    gdf2.to_file(tmp_path / "bad.geojson", driver="GeoJSON")
    with pytest.raises(SatSynthError, match=r"not in the class table: 'pond' \(1 features\)"):
        prepare_dataset(tmp_path / "ds2", images=ip, vectors=tmp_path / "bad.geojson",
                        class_field="code", classes=classes, background=None, chip_size=64)


def _road_width_m(labels: np.ndarray, road: int, res_m: tuple[float, float],
                  length_m: float) -> float:
    """Mean width of a burnt road: its pixel area divided by its length."""
    area = (labels == road).sum() * res_m[0] * res_m[1]
    return area / length_m


def test_line_buffer_is_in_metres_in_a_projected_and_a_geographic_image(tmp_path):
    # projected: a 100 m diagonal line, buffer 2 m -> about 4 m wide
    img = np.full((1, 256, 256), 100, np.uint8)
    ip = write_raster(tmp_path / "img.tif", img)
    line = LineString([(330_010, 2_790_000 - 20), (330_080, 2_790_000 - 91.4)])
    vp = tmp_path / "roads.gpkg"
    gpd.GeoDataFrame({"type": ["road"]}, geometry=[line], crs="EPSG:32640").to_file(vp)
    out = prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, class_field="type",
                          line_buffer=2.0, chip_size=64, val_fraction=0, min_labeled=0)
    lab = all_labels(ChipStore(out), 256, 256)
    width = _road_width_m(lab, 1, (0.5, 0.5), line.length)
    assert 3.6 < width < 4.6
    # geographic: an EPSG:4326 image at 2.7e-6 degrees (about 0.24 x 0.30 m at 36 N)
    res = 2.7e-6
    t = Affine(res, 0, -115.30, 0, -res, 36.16)
    ip4 = write_raster(tmp_path / "img4326.tif", img, crs=CRS.from_epsg(4326), transform=t)
    lat = 36.16 - 128 * res
    line4 = LineString([(-115.30 + 20 * res, lat), (-115.30 + 230 * res, lat + 1e-6)])
    vp4 = tmp_path / "roads4326.geojson"
    gpd.GeoDataFrame({"type": ["road"]}, geometry=[line4], crs="EPSG:4326").to_file(vp4)
    out = prepare_dataset(tmp_path / "ds4", images=ip4, vectors=vp4, class_field="type",
                          line_buffer=2.0, chip_size=64, val_fraction=0, min_labeled=0)
    lab = all_labels(ChipStore(out), 256, 256, origin=t)
    m_per_deg_lat = 111_000.0
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(lat))
    length_m = gpd.GeoSeries([line4], crs="EPSG:4326").to_crs("EPSG:32611").length.iloc[0]
    width = _road_width_m(lab, 1, (res * m_per_deg_lon, res * m_per_deg_lat), length_m)
    assert 3.4 < width < 4.8  # 4 m wide although the image is in degrees
    # without a buffer, lines are burnt one pixel wide: one pixel per step along the long axis
    out = prepare_dataset(tmp_path / "ds5", images=ip, vectors=vp, class_field="type",
                          chip_size=64, val_fraction=0, min_labeled=0)
    lab = all_labels(ChipStore(out), 256, 256)
    steps = 91.4 / 0.5 - 20 / 0.5
    assert 0.95 * steps < (lab == 1).sum() < 1.3 * steps


def _color_mask_folder(root: Path, rng: np.random.Generator) -> dict:
    """Two sub-folders with images/ + masks/: RGB PNG masks and paletted PNG masks."""
    from PIL import Image

    colors = {"sand": (132, 41, 246), "road": (110, 193, 228), "water": (226, 169, 41)}
    classes = {"ignore_color": "#000000", "classes": [
        {"id": i + 1, "name": n, "color": "#{:02x}{:02x}{:02x}".format(*c)}
        for i, (n, c) in enumerate(colors.items())]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(classes))
    truth = {}
    for tile, paletted in (("Tile A", False), ("Tile B", True)):
        (root / tile / "images").mkdir(parents=True)
        (root / tile / "masks").mkdir(parents=True)
        for k in range(2):
            h, w = 150 + 10 * k, 140
            ids = rng.integers(0, 3, (h // 10 + 1, w // 10 + 1)).repeat(10, 0).repeat(10, 1)[:h, :w]
            ids[:5, :] = 3  # a strip of ignore (black)
            pal = np.array([colors["sand"], colors["road"], colors["water"], (0, 0, 0)], np.uint8)
            stem = f"part_{k}"
            if paletted:
                im = Image.fromarray(ids.astype(np.uint8), mode="P")
                im.putpalette(pal.ravel().tolist() + [0] * (768 - pal.size))
                im.save(root / tile / "masks" / f"{stem}.png")
            else:
                Image.fromarray(pal[ids]).save(root / tile / "masks" / f"{stem}.png")
            img = (pal[ids] // 2 + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
            Image.fromarray(img).save(root / tile / "images" / f"{stem}.png")
            truth[(tile, stem)] = np.where(ids == 3, 255, ids).astype(np.uint8)
    (root / "Tile A" / "images" / "lonely.png").write_bytes(
        (root / "Tile A" / "images" / "part_0.png").read_bytes())
    return truth


def test_colour_mask_folder_rgb_and_paletted_in_pixel_space(tmp_path, caplog):
    truth = _color_mask_folder(tmp_path / "data", np.random.default_rng(2))
    with caplog.at_level("WARNING", logger="satsynth"):
        out = prepare_dataset(tmp_path / "ds", folder=tmp_path / "data", chip_size=32,
                              val_sources="Tile B", min_labeled=0.5)
    assert "lonely.png: no mask" in caplog.text
    store = ChipStore(out)
    assert store.meta.crs is None and store.meta.pixel_size is None
    assert store.classes.names == ["sand", "road", "water"]
    srcs = store.meta.sources
    assert len(srcs) == 4 and {s["label_kind"] for s in srcs} == {"colors"}
    n = 0
    for split in ("train", "val"):
        s = store.split(split)
        for k in range(len(s)):
            a, b, c, d, e, f = s.transforms[k]
            assert (a, b, d, e) == (1, 0, 0, 1)  # pixel space: col/row offsets
            src = srcs[int(s.sources[k])]
            key = (Path(src["image"]).parent.parent.name, Path(src["image"]).stem)
            ref = truth[key][int(f):int(f) + 32, int(c):int(c) + 32]
            np.testing.assert_array_equal(s.labels[k], ref)
            assert (split == "val") == (key[0] == "Tile B")
            n += 1
    assert n > 20
    # the black ignore strip at the top is never trained on: chips there are mostly ignore
    assert (np.asarray(store.split("train").labels) == 255).mean() < 0.2
    info = dataset_info(out)
    assert info["crs"] == "not georeferenced" and info["pixel_size"] is None
    gdf = gpd.read_file(out / "chips.gpkg")
    assert gdf.crs is None and len(gdf) == n


def test_unknown_mask_colours_are_listed_with_pixel_counts(tmp_path):
    from PIL import Image

    truth_dir = tmp_path / "data"
    _color_mask_folder(truth_dir, np.random.default_rng(3))
    mask = truth_dir / "Tile A" / "masks" / "part_1.png"
    arr = np.asarray(Image.open(mask)).copy()
    arr[100:110, 0:12] = (1, 2, 3)
    arr[120:121, 0:5] = (255, 255, 255)
    Image.fromarray(arr).save(mask)
    with pytest.raises(SatSynthError) as e:
        prepare_dataset(tmp_path / "ds", folder=truth_dir, chip_size=32)
    msg = str(e.value)
    assert "part_1.png" in msg and "mask colours not in the class table" in msg
    assert "#010203 (120 px)" in msg and "#ffffff (5 px)" in msg
    assert not (tmp_path / "ds").exists()


def test_class_table_inferred_from_mask_colours_without_classes_json(tmp_path):
    _color_mask_folder(tmp_path / "data", np.random.default_rng(4))
    (tmp_path / "data" / "classes.json").unlink()
    out = prepare_dataset(tmp_path / "ds", folder=tmp_path / "data", chip_size=32,
                          val_fraction=0, min_labeled=0)
    names = ChipStore(out).classes.names
    assert set(names) == {"class #8429f6", "class #6ec1e4", "class #e2a929", "class #000000"}


def test_single_class_when_no_class_field_and_mislabeled_geojson_crs(tmp_path, caplog):
    """GeoJSON claiming WGS 84 with projected coordinates inside the image is read in the
    image CRS (as many tools write it); far-away projected coordinates are refused."""
    img = np.full((1, 128, 128), 9, np.uint8)
    ip = write_raster(tmp_path / "img.tif", img)
    poly = box(330_010, 2_790_000 - 50, 330_040, 2_790_000 - 10)
    vp = tmp_path / "houses.geojson"
    vp.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": 43127},
         "geometry": shapely.geometry.mapping(poly)}]}))
    with caplog.at_level("WARNING", logger="satsynth"):
        out = prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, chip_size=64,
                              val_fraction=0, min_labeled=0)
    assert "not longitude/latitude" in caplog.text
    store = ChipStore(out)
    assert store.classes.names == ["background", "houses"]
    lab = all_labels(store, 128, 128)
    assert (lab == 1).sum() == 60 * 80
    far = box(100_000, 100_000, 100_010, 100_010)
    vp.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(far)}]}))
    with pytest.raises(SatSynthError, match="not longitude/latitude: its CRS is wrong"):
        prepare_dataset(tmp_path / "ds2", images=ip, vectors=vp, chip_size=64)
