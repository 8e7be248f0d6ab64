"""The data layer on real data in <repo>/../shared/datasets (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize, shapes

from satsynth.data.info import dataset_info
from satsynth.data.labels import pack_rgb
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "datasets"
DUBAI = DATA / "dubai-aerial"
SPACENET = DATA / "spacenet-samples"
pytestmark = pytest.mark.realdata

# class shares over all pixels, from the dataset's README
README_SHARES = {"Land (unpaved area)": 0.52, "Water": 0.14, "Building": 0.13,
                 "Vegetation": 0.10, "Road": 0.09}


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} absent: real-data test skipped")


def mosaic_labels(store: ChipStore, source: int, shape: tuple[int, int]) -> np.ndarray:
    """The stored labels of one source put back on its pixel grid (255 where no chip)."""
    out = np.full(shape, 255, np.uint8)
    t = store.meta.sources[source]["transform"]
    for split in ("train", "val"):
        s = store.split(split)
        size = s.labels.shape[1]
        for k in np.flatnonzero(s.sources == source):
            col = int(round((s.transforms[k][2] - t[2]) / t[0]))
            row = int(round((s.transforms[k][5] - t[5]) / t[4]))
            out[row:row + size, col:col + size] = s.labels[k]
    return out


@pytest.fixture(scope="module")
def dubai(tmp_path_factory):
    need(DUBAI)
    out = tmp_path_factory.mktemp("dubai") / "ds"
    # Tile 1 has RGB masks, Tile 2 paletted ones; their folders are searched recursively
    root = tmp_path_factory.mktemp("dubai_subset")
    for t in ("Tile 1", "Tile 2"):
        (root / t).symlink_to(DUBAI / t)
    prepare_dataset(out, folder=root, classes=DUBAI / "classes.json", chip_size=128,
                    val_sources="Tile 2", min_labeled=0)
    return ChipStore(out)


def test_dubai_colour_masks_map_to_the_right_classes(dubai):
    from PIL import Image

    table = dubai.classes
    assert dubai.meta.crs is None and dataset_info(dubai.path)["crs"] == "not georeferenced"
    lut = {pack_rgb(c.color): i for i, c in enumerate(table.classes)}
    lut[0] = 255  # black = unannotated = ignore
    kinds = set()
    for i, src in enumerate(dubai.meta.sources[::4]):
        i *= 4
        mask = Image.open(src["labels"])
        kinds.add(mask.mode)
        rgb = np.asarray(mask.convert("RGB")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        expect = np.vectorize(lut.__getitem__, otypes=[np.uint8])(codes)
        got = mosaic_labels(dubai, i, expect.shape)
        covered = got != 255
        assert covered.mean() > 0.95
        np.testing.assert_array_equal(got[covered], expect[covered])
    assert kinds == {"RGB", "P"}
    # class shares roughly as the README says (two tiles only: a loose match)
    px = sum(np.asarray(dubai.meta.class_pixels[s], float) for s in ("train", "val"))
    share = px / px.sum()
    for name, ref in README_SHARES.items():
        assert abs(share[table.index_of_name(name)] - ref) < 0.11, (name, share)
    # and the colours mean what the names say: water is the darkest class, land the brightest
    tr = dubai.split("train")
    img = np.asarray(tr.images).astype(np.float32).mean(1)
    lab = np.asarray(tr.labels)
    bright = {c.name: img[lab == i].mean() for i, c in enumerate(table.classes) if (lab == i).any()}
    assert min(bright, key=bright.get) == "Water"
    assert max(bright, key=bright.get) == "Land (unpaved area)"


def test_spacenet_buildings_rasterize_onto_the_utm_image(tmp_path):
    need(SPACENET)
    image, vec = SPACENET / "sample_geotiff.tif", SPACENET / "geotiff_labels.geojson"
    out = prepare_dataset(tmp_path / "ds", images=image, vectors=vec, class_field="building",
                          chip_size=64, min_labeled=0, val_fraction=0.2)
    store = ChipStore(out)
    assert store.meta.crs == "EPSG:32616" and store.meta.dtype == "uint16"
    bidx = store.classes.index_of_name("yes")
    assert store.meta.class_pixels["train"][bidx] > 0
    with rasterio.open(image) as src:
        shape, transform, bounds = src.shape, src.transform, src.bounds
        nodata = src.read(1) == 0
    got = mosaic_labels(store, 0, shape)
    gdf = gpd.read_file(vec)
    ref = rasterize([(g, 1) for g in gdf.geometry], out_shape=shape, transform=transform,
                    fill=0, dtype="uint8")
    valid = (got != 255) & ~nodata
    assert ((got[valid] == bidx) == (ref[valid] == 1)).mean() > 0.999
    # footprints land inside the image and chips keep UTM coordinates
    buildings = shapely.union_all(gdf.geometry.values)
    assert shapely.box(*bounds).intersection(buildings).area > 0.95 * buildings.area
    idx = gpd.read_file(out / "chips.gpkg")
    assert idx.crs.to_epsg() == 32616
    assert shapely.box(*bounds).buffer(1e-6).contains(shapely.union_all(idx.geometry.values))


def test_spacenet_roads_in_epsg4326(tmp_path):
    need(SPACENET)
    image = SPACENET / "road_mask_input.tif"
    # the shipped road centre lines are of another area: refused with a clear message
    with pytest.raises(SatSynthError, match="do not overlap the image road_mask_input.tif"):
        prepare_dataset(tmp_path / "x", images=image, vectors=SPACENET / "sample_roads.geojson",
                        class_field="paved", line_buffer=2, chip_size=128)
    # the road mask of this image as polygons in UTM, burnt back onto the EPSG:4326 grid
    with rasterio.open(SPACENET / "sample_road_raster_mask.tif") as src:
        mask, transform, shape = src.read(1), src.transform, src.shape
    polys = [shapely.geometry.shape(g) for g, v in shapes(mask, transform=transform) if v == 255]
    gdf = gpd.GeoDataFrame({"cls": ["road"] * len(polys)}, geometry=polys, crs="EPSG:4326")
    gdf.to_crs("EPSG:32611").to_file(tmp_path / "roads_utm.gpkg")
    out = prepare_dataset(tmp_path / "ds", images=image, vectors=tmp_path / "roads_utm.gpkg",
                          class_field="cls", chip_size=128, min_labeled=0)
    store = ChipStore(out)
    got = mosaic_labels(store, 0, shape)
    road = store.classes.index_of_name("road")
    a, b = got == road, mask == 255
    iou = (a & b).sum() / (a | b).sum()
    assert iou > 0.95, iou  # chance level would be about the road share, 0.03
    # line buffers in metres on the real centre lines, on a grid in degrees like the image's
    lines = gpd.read_file(SPACENET / "sample_roads.geojson")
    x0, y0, x1, y1 = lines.total_bounds
    res = 2.7e-6
    w, h = int((x1 - x0) / res) + 40, int((y1 - y0) / res) + 40
    t = rasterio.transform.from_origin(x0 - 20 * res, y1 + 20 * res, res, res)
    grid = tmp_path / "grid4326.tif"
    with rasterio.open(grid, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16",
                       crs="EPSG:4326", transform=t) as dst:
        dst.write(np.full((1, h, w), 500, np.uint16))
    out = prepare_dataset(tmp_path / "ds2", images=grid, vectors=SPACENET / "sample_roads.geojson",
                          class_field="paved", line_buffer=2.0, chip_size=128, min_labeled=0,
                          val_fraction=0)
    store = ChipStore(out)
    got = mosaic_labels(store, 0, (h, w))
    lat = np.radians((y0 + y1) / 2)
    px_area = (res * 111_320 * np.cos(lat)) * (res * 110_950)
    burnt = (got == store.classes.index_of_name("class 1")).sum() * px_area
    utm = lines.to_crs(lines.estimate_utm_crs())
    expected = shapely.union_all(utm.buffer(2.0).values).area
    assert 0.9 < burnt / expected < 1.1


def test_custom_albers_projection_image_and_its_labels(tmp_path):
    need(SPACENET)
    image = SPACENET / "sample_geotiff_custom_proj.tif"
    out = prepare_dataset(tmp_path / "ds", images=image,
                          vectors=SPACENET / "geotiff_custom_proj_labels.geojson", chip_size=64,
                          min_labeled=0)
    store = ChipStore(out)
    info = dataset_info(out)
    assert info["crs"] == ("custom CRS (Albers Equal Area, World Geodetic System 1984; no EPSG "
                           "code)") and info["pixel_size"] == [30, 30]
    assert "Albers" in store.meta.crs and store.meta.dtype == "int16" and store.meta.bands == 3
    fg = store.classes.index_of_name("geotiff_custom_proj_labels")
    assert store.meta.class_pixels["train"][fg] + store.meta.class_pixels["val"][fg] > 500
    with rasterio.open(image) as src:
        assert tuple(store.split("train").transforms[0][[0, 4]]) == (30.0, -30.0)
        b = src.bounds
    t = store.split("train").transforms
    assert (t[:, 2] >= b.left).all() and (t[:, 5] <= b.top).all()
    idx = gpd.read_file(out / "chips.gpkg")
    assert idx.crs is not None and idx.crs.to_epsg() is None and "Albers" in idx.crs.to_wkt()
