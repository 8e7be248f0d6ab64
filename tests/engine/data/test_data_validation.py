"""Bad or awkward input: each problem gives one clear error naming the file, or is handled."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasters import ORIGIN, write_raster
from shapely.geometry import box

from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, (3, 128, 128)).astype(np.uint8)
    lab = (1 + (np.arange(128)[:, None] // 16 + np.arange(128)[None, :] // 16) % 2).astype(np.uint8)
    return (write_raster(tmp_path / "img.tif", img), write_raster(tmp_path / "lab.tif", lab),
            img, lab)


def test_label_grid_differs_labels_are_warped_with_nearest_neighbour(tmp_path, pair, caplog):
    ip, _, _, _ = pair
    # labels at 1 m (2x the image's pixel size), shifted by 16 m, covering part of the image
    coarse = (np.arange(40)[:, None] + 2 * np.arange(50)[None, :]) % 5
    t = Affine(1.0, 0, 330_016, 0, -1.0, 2_790_000 - 8)
    lp = write_raster(tmp_path / "coarse.tif", coarse.astype(np.uint8), transform=t)
    with caplog.at_level("WARNING", logger="satsynth"):
        out = prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=32,
                              val_fraction=0, min_labeled=0.1)
    assert "coarse.tif: label grid" in caplog.text and "warped onto the image grid" in caplog.text
    assert "nearest neighbour" in caplog.text
    store = ChipStore(out)
    s = store.split("train")
    for k in range(len(s)):
        col = int(round((s.transforms[k][2] - ORIGIN.c) / 0.5))
        row = int(round((ORIGIN.f - s.transforms[k][5]) / 0.5))
        # the image pixel (r, c) centre lies in label pixel ((r - 16) // 2, (c - 32) // 2)
        rr = (np.arange(row, row + 32) - 16) // 2
        cc = (np.arange(col, col + 32) - 32) // 2
        inside = ((rr >= 0) & (rr < 40))[:, None] & ((cc >= 0) & (cc < 50))[None, :]
        expect = np.where(inside, coarse[np.clip(rr, 0, 39)][:, np.clip(cc, 0, 49)], 255)
        lut = store.classes.id_to_index_lut()
        np.testing.assert_array_equal(s.labels[k], lut[expect.astype(np.uint8)])


def test_labels_that_do_not_overlap_are_refused(tmp_path, pair):
    ip, _, _, lab = pair
    far = write_raster(tmp_path / "far.tif", lab, transform=ORIGIN @ Affine.translation(5000, 0))
    with pytest.raises(SatSynthError, match=r"far.tif: the labels do not overlap the image img.tif"):
        prepare_dataset(tmp_path / "ds", images=ip, labels=far, chip_size=32)
    gdf = gpd.GeoDataFrame({"c": ["a"]}, geometry=[box(0, 0, 10, 10)], crs="EPSG:32640")
    gdf.to_file(tmp_path / "far.gpkg")
    with pytest.raises(SatSynthError, match=r"far.gpkg: the features do not overlap the image"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=tmp_path / "far.gpkg",
                        class_field="c", chip_size=32)
    assert not (tmp_path / "ds").exists()


def test_one_georeferenced_and_the_other_not_is_refused_saying_which(tmp_path, pair):
    ip, lp, img, lab = pair
    plain_lab = write_raster(tmp_path / "plain_lab.tif", lab, crs=None)
    with pytest.raises(SatSynthError, match=r"plain_lab.tif: the labels have no CRS .* but the "
                                            r"image img.tif is in EPSG:32640"):
        prepare_dataset(tmp_path / "ds", images=ip, labels=plain_lab, chip_size=32)
    plain_img = write_raster(tmp_path / "plain_img.tif", img, crs=None)
    with pytest.raises(SatSynthError, match=r"lab.tif: the image plain_img.tif has no CRS .* but "
                                            r"the labels are in EPSG:32640"):
        prepare_dataset(tmp_path / "ds", images=plain_img, labels=lp, chip_size=32)
    # both in pixel space but of different sizes: cannot be aligned
    small = write_raster(tmp_path / "small_lab.tif", lab[:100], crs=None)
    with pytest.raises(SatSynthError, match=r"small_lab.tif: labels are 128x100 px but the image "
                                            r"plain_img.tif is 128x128 px"):
        prepare_dataset(tmp_path / "ds", images=plain_img, labels=small, chip_size=32)
    # a pixel-space pair works and says so
    out = prepare_dataset(tmp_path / "ok", images=plain_img, labels=plain_lab, chip_size=32)
    assert ChipStore(out).meta.crs is None


def test_label_values_not_in_the_class_table_are_listed_with_counts(tmp_path, pair):
    ip, _, _, lab = pair
    lab = lab.copy()
    lab[0, :7] = 9
    lab[5:7, :60] = 4
    lp = write_raster(tmp_path / "odd.tif", lab)
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  - {id: 1, name: field}\n  - {id: 2, name: forest}\n")
    with pytest.raises(SatSynthError) as e:
        prepare_dataset(tmp_path / "ds", images=ip, labels=lp, classes=classes, chip_size=32)
    assert str(e.value).startswith(f"{lp}: label values not in the class table: "
                                   "4 (120 px), 9 (7 px)")
    # ids that can never be classes (> 254) are refused when the table is inferred
    big = write_raster(tmp_path / "big.tif", lab.astype(np.uint16) * 300)
    with pytest.raises(SatSynthError, match=r"big.tif: label values that cannot be class ids "
                                            r".*: 600 \(8136 px\), 300 \(8121 px\), 1200"):
        prepare_dataset(tmp_path / "ds", images=ip, labels=big, chip_size=32)


def test_unreadable_and_damaged_files(tmp_path, pair):
    ip, lp, img, _ = pair
    junk = tmp_path / "junk.tif"
    junk.write_text("this is not a raster")
    with pytest.raises(SatSynthError, match=r"junk.tif: cannot read image: not a raster GDAL can "
                                            r"open, or damaged"):
        prepare_dataset(tmp_path / "ds", images=junk, labels=lp, chip_size=32)
    with pytest.raises(SatSynthError, match=r"nope.tif: label raster file not found"):
        prepare_dataset(tmp_path / "ds", images=ip, labels=tmp_path / "nope.tif", chip_size=32)
    # a truncated GeoTIFF: opens, but its pixels cannot be read
    big = np.random.default_rng(1).integers(0, 255, (3, 512, 512)).astype(np.uint8)
    full = write_raster(tmp_path / "full.tif", big, tiled=True, blockxsize=64, blockysize=64)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    lab = write_raster(tmp_path / "lab512.tif", np.ones((512, 512), np.uint8))
    with pytest.raises(SatSynthError, match=r"cut.tif: cannot read"):
        prepare_dataset(tmp_path / "ds", images=cut, labels=lab, chip_size=64)
    bad_vec = tmp_path / "bad.geojson"
    bad_vec.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(SatSynthError, match=r"bad.geojson: cannot read vector labels"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=bad_vec, class_field="x",
                        chip_size=32)
    assert not (tmp_path / "ds").exists()


def test_raster_smaller_than_a_chip(tmp_path, pair):
    ip, lp, _, _ = pair
    with pytest.raises(SatSynthError, match=r"img.tif: 128x128 px is smaller than one 256 px chip"):
        prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=256)


def test_pairs_whose_bands_crs_or_dtype_differ_are_refused(tmp_path, pair):
    ip, lp, img, lab = pair
    two = write_raster(tmp_path / "two.tif", img[:2])
    with pytest.raises(SatSynthError, match=r"two.tif: 2 bands but img.tif has 3"):
        prepare_dataset(tmp_path / "ds", images=[ip, two], labels=[lp, lp], chip_size=32)
    other_crs = CRS.from_epsg(32639)
    oi = write_raster(tmp_path / "zone39.tif", img, crs=other_crs)
    ol = write_raster(tmp_path / "zone39_lab.tif", lab, crs=other_crs)
    with pytest.raises(SatSynthError, match=r"zone39.tif: in EPSG:32639 .* but img.tif is in "
                                            r"EPSG:32640 .*share one CRS"):
        prepare_dataset(tmp_path / "ds", images=[ip, oi], labels=[lp, ol], chip_size=32)
    wide = write_raster(tmp_path / "u16.tif", img.astype(np.uint16))
    with pytest.raises(SatSynthError, match=r"u16.tif: data type uint16 but img.tif is uint8"):
        prepare_dataset(tmp_path / "ds", images=[ip, wide], labels=[lp, lp], chip_size=32)
    with pytest.raises(SatSynthError, match=r"2 --image but 1 --labels"):
        prepare_dataset(tmp_path / "ds", images=[ip, ip], labels=[lp], chip_size=32)
    with pytest.raises(SatSynthError, match=r"give the labels one way"):
        prepare_dataset(tmp_path / "ds", images=[ip], chip_size=32)


def test_vector_field_layer_and_crs_problems(tmp_path, pair):
    ip, _, _, _ = pair
    gdf = gpd.GeoDataFrame({"landuse": ["a", "b"], "area": [1, 2]},
                           geometry=[box(330_000, 2_789_950, 330_030, 2_789_990),
                                     box(330_030, 2_789_950, 330_060, 2_789_990)],
                           crs="EPSG:32640")
    vp = tmp_path / "lu.gpkg"
    gdf.to_file(vp, layer="landuse")
    with pytest.raises(SatSynthError, match=r"lu.gpkg: no field 'class'; the fields are: "
                                            r"landuse, area"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, class_field="class", chip_size=32)
    with pytest.raises(SatSynthError, match=r"lu.gpkg: no layer 'roads'; the layers are: landuse"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, layer="roads",
                        class_field="landuse", chip_size=32)
    nocrs = tmp_path / "nocrs.geojson"
    gdf.set_crs(None, allow_override=True).to_file(nocrs)
    # GeoJSON without a CRS is WGS 84 by definition; projected numbers in it inside the image
    # are accepted as the image CRS (tested elsewhere); a shapefile without .prj has no CRS
    shp = tmp_path / "nocrs.shp"
    gdf.set_crs(None, allow_override=True).to_file(shp)
    with pytest.raises(SatSynthError, match=r"nocrs.shp: the vector labels have no CRS"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=shp, class_field="landuse",
                        chip_size=32)
    classes = tmp_path / "classes.json"
    classes.write_text('{"classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}')
    with pytest.raises(SatSynthError, match=r"no class 'background' and no id 0"):
        prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, class_field="landuse",
                        classes=classes, chip_size=32)
    out = prepare_dataset(tmp_path / "ds", images=ip, vectors=vp, class_field="landuse",
                          classes=classes, background="a", chip_size=32, val_fraction=0,
                          min_labeled=0)
    labels = np.asarray(ChipStore(out).split("train").labels)
    assert set(np.unique(labels).tolist()) == {0, 1}
