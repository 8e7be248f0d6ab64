"""satsynth predict: streamed sliding-window prediction over georeferenced rasters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import ENV, T_UTM, TABLE, UTM, brightness_image, make_model
from rasterio.transform import from_origin
from rasters import write_raster

from satsynth.checkpoint import save_model_dir
from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError
from satsynth.predict.predict import predict_raster
from satsynth.segmenter.model import SegmenterConfig, build_segmenter

REPO = Path(__file__).resolve().parents[3]
SPACENET = REPO / ".." / "shared" / "datasets" / "spacenet-samples"
SATSYNTH = [sys.executable, "-m", "satsynth"]

pytestmark = pytest.mark.usefixtures("one_thread")


def one_pass(model, cfg_normalizer: Normalizer, img: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(cfg_normalizer.to_model(img)[None])
        return model(x).argmax(1)[0].numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny 1x1-conv segmenter fitted to map dark / mid / bright to water / land / roof."""
    d = tmp_path_factory.mktemp("fitted")
    img, idx = brightness_image(96, 96, seed=1)
    path, model = make_model(d / "seg", encoder="w4d0", fit_to=(img, idx))
    return path, model


# --- windows and blending ------------------------------------------------------------------


def test_every_pixel_in_one_cell_finalized_after_all_its_tiles():
    from satsynth.raster import TileGrid

    for h, w, tile, ov in [(1000, 1300, 256, 32), (300, 200, 256, 64), (513, 97, 128, 64),
                           (1000, 1000, 512, 64)]:
        g = TileGrid.for_region(h, w, tile, ov)
        cover = np.zeros((h, w), np.int32)
        order = {t[:2]: n for n, t in enumerate(g.tiles())}
        finals: dict[tuple[int, int], tuple[int, int]] = {}
        for k, j, y, x in g.tiles():
            for r, c in g.cells_of(k, j):
                y0, y1, x0, x1 = g.cell_window(r, c)
                assert y <= y0 and y1 <= y + g.tile_h and x <= x0 and x1 <= x + g.tile_w
            for cell in g.cells_final_after(k, j):
                assert cell not in finals
                finals[cell] = (k, j)
        for (r, c), tile_kj in finals.items():
            y0, y1, x0, x1 = g.cell_window(r, c)
            cover[y0:y1, x0:x1] += 1
            # every tile touching the cell comes no later than the one that finalizes it
            for k, j, y, x in g.tiles():
                if y < y1 and y + g.tile_h > y0 and x < x1 and x + g.tile_w > x0:
                    assert order[(k, j)] <= order[tile_kj]
        assert (cover == 1).all()
        starts = g.rows.starts
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:], strict=False))


def test_blend_weights_are_smooth_and_sum_to_one_across_a_seam():
    from satsynth.predict.blend import ramp_window

    r = ramp_window(128, 32)
    assert r[32:96].min() == 1.0 and r[0] < 0.01 and np.all(np.diff(r[:32]) > 0)
    # two tiles overlapping by exactly the ramp: weights add up to 1 everywhere in the seam
    np.testing.assert_allclose(r[96:] + r[:32], 1.0, atol=1e-5)


def test_streamed_blend_and_block_row_writing_equal_the_whole_raster_in_memory(tmp_path):
    """What the sliding window writes, cell by cell and block row by block row (bands of ~96
    rows into 512-row GeoTIFF blocks, across their edges), equals the blend computed over the
    whole raster in memory, bit for bit: classes (nodata where the input has none, and on the
    all-nodata tiles that are never run) and confidences."""
    import torch

    from satsynth.predict.blend import BlendAccumulator, blend_window
    from satsynth.predict.forward import Forward
    from satsynth.predict.source import TileReader
    from satsynth.predict.tiles import run_tiles
    from satsynth.predict.windows import Region, TilePlan
    from satsynth.predict.writer import PredictionWriter

    class PixelForward(Forward):
        """Class probabilities of each pixel's own band values (a softmax of fixed mixes)."""

        name = "pixel"
        mix = np.random.default_rng(5).normal(0, 2, (len(TABLE), 3)).astype(np.float32)

        def __call__(self, x):  # elementwise only: the same per pixel for any batch
            logits = sum(self.mix[None, :, c, None, None] * x[:, c:c + 1] for c in range(3))
            e = np.exp(logits - logits.max(1, keepdims=True))
            return torch.from_numpy(e / e.sum(1, keepdims=True))

    h, w, tile, overlap = 1100, 230, 128, 32
    img, _ = brightness_image(h, w, seed=4)
    img[:, 300:460, :] = 0  # nodata rows: whole tiles with nothing to predict are not run
    img[:, 700:720, 40:90] = 0
    path = write_raster(tmp_path / "img.tif", img, nodata=0)
    cpu = torch.device("cpu")
    plan = TilePlan(forward=PixelForward(), device=cpu, num_classes=len(TABLE), tile=tile,
                    overlap=overlap, batch=3, multiple=1, lut=TABLE.index_to_id_lut())
    norm = Normalizer([0.0] * 3, [255.0] * 3)
    region = Region(0, 0, h, w)
    with rasterio.open(path) as src, torch.inference_mode():
        reader = TileReader(src, [1, 2, 3], norm, path)
        writer = PredictionWriter(tmp_path / "pred.tif", width=w, height=h, crs=src.crs,
                                  transform=src.transform, confidence_path=tmp_path / "c.tif")
        run_tiles(reader, region, writer, plan)
        writer.close()
        assert writer.complete
        # the same tiles blended over the whole raster at once
        grid = plan.grid(region)
        window = blend_window(grid.tile_h, grid.tile_w, overlap)
        acc = np.zeros((len(TABLE), h, w), np.float32)
        seen = np.zeros((h, w), bool)
        valid_all = np.zeros((h, w), bool)
        for _, _, y, x in grid.tiles():
            data, valid = reader.read(y, x, grid.tile_h, grid.tile_w)
            th, tw = min(grid.tile_h, h - y), min(grid.tile_w, w - x)
            if not valid[:th, :tw].any():
                continue
            probs = (plan.forward(data[None])[0] * torch.from_numpy(window)).numpy()
            acc[:, y:y + th, x:x + tw] += probs[:, :th, :tw]
            seen[y:y + th, x:x + tw] = True
            valid_all[y:y + th, x:x + tw] = valid[:th, :tw]
    sums = BlendAccumulator(grid, len(TABLE))
    want_ids = TABLE.index_to_id_lut()[acc.argmax(0).astype(np.uint8)]
    top = acc.max(0) / np.outer(sums.sum_y, sums.sum_x)
    want_conf = np.clip(np.rint(top * 255.0), 1, 255).astype(np.uint8)
    nodata = ~(seen & valid_all)
    want_ids[nodata], want_conf[nodata] = 255, 0
    with rasterio.open(tmp_path / "pred.tif") as ds, rasterio.open(tmp_path / "c.tif") as cs:
        assert ds.block_shapes[0][0] == 512  # bands of ~96 rows cross block rows
        got_ids, got_conf = ds.read(1), cs.read(1)
    assert (got_ids == 255).sum() > 160 * w and len(np.unique(want_ids)) >= 3
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_conf, want_conf)


def test_tiled_prediction_with_overlap_equals_one_pass(tmp_path):
    """Seamless: a fully convolutional model tiled with overlap == the whole image at once."""
    img, _ = brightness_image(700, 900, seed=3)
    rng = np.random.default_rng(3)
    img = np.clip(img.astype(np.int16) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    path, model = make_model(tmp_path / "seg", encoder="w16d2", seed=3)
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    predict_raster(path, tmp_path / "img.tif", tmp_path / "pred.tif", tile=128, overlap=32,
                   batch=4, device="cpu")
    with rasterio.open(tmp_path / "pred.tif") as ds:
        got = ds.read(1)
    from satsynth.segmenter.model import SegmenterConfig as C
    cfg = C.from_dict(json.loads((path / "config.json").read_text()))
    ref = TABLE.index_to_id_lut()[one_pass(model, cfg.normalization, img)]
    assert len(np.unique(ref)) >= 2  # a non-trivial map
    agree = (got == ref).mean()
    assert agree >= 0.999, f"tiled vs one-pass agreement {agree:.5f}"


# --- outputs ---------------------------------------------------------------------------------


def test_output_keeps_grid_classes_style_and_nodata(tmp_path, fitted):
    model_dir, _ = fitted
    img, idx = brightness_image(600, 800, seed=5)
    img[:, :100, :150] = 0  # nodata corner
    write_raster(tmp_path / "img.tif", img, nodata=0, transform=T_UTM)
    out = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "out" / "pred.tif",
                         confidence=tmp_path / "out" / "conf.tif", tile=256, overlap=32,
                         device="cpu")
    assert set(out) == {"prediction", "style", "confidence", "pixels", "seconds", "runtime"}
    assert out["pixels"] == 600 * 800
    with rasterio.open(out["prediction"]) as ds:
        pred = ds.read(1)
        assert ds.crs.to_epsg() == 32640 and ds.transform == T_UTM
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (800, 600, 1, "uint8")
        assert ds.nodata == 255 and ds.is_tiled and ds.compression.value == "DEFLATE"
        cmap = ds.colormap(1)
        assert cmap[1][:3] == (0x1F, 0x4E, 0x9C) and cmap[9][:3] == (0xD6, 0x27, 0x28)
        assert ds.descriptions[0] == "class"
        assert ds.tags(1)["CLASS_9"] == "roof & tower"
    # class ids (not indices) where there is data, nodata where the input has none
    assert (pred[:100, :150] == 255).all()
    valid = np.ones_like(pred, dtype=bool)
    valid[:100, :150] = False
    expected = TABLE.index_to_id_lut()[idx]
    assert (pred[valid] == expected[valid]).mean() > 0.97
    assert set(np.unique(pred)) == {1, 5, 9, 255}
    # confidence: 0 = nodata, otherwise the top probability x 255
    with rasterio.open(out["confidence"]) as ds:
        conf = ds.read(1)
        assert ds.nodata == 0 and ds.transform == T_UTM
    assert (conf[:100, :150] == 0).all() and conf[valid].min() >= 255 // 3
    # QGIS style next to the raster and GDAL category names / attribute table in .aux.xml
    qml = Path(out["style"]).read_text()
    assert Path(out["style"]) == tmp_path / "out" / "pred.qml"
    assert 'value="9"' in qml and "roof &amp; tower" in qml
    aux = (tmp_path / "out" / "pred.tif.aux.xml").read_text()
    assert "<Category>roof &amp; tower</Category>" in aux and "GDALRasterAttributeTable" in aux
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "conf.tif", "pred.qml", "pred.tif", "pred.tif.aux.xml"]


def test_cog_output_has_overviews_and_colour_table(tmp_path, fitted):
    model_dir, _ = fitted
    img, _ = brightness_image(1100, 1100, seed=6)
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    out = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "pred.tif", cog=True,
                         confidence=tmp_path / "conf.tif", tile=512, overlap=64, device="cpu")
    for path in (out["prediction"], out["confidence"]):
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.overviews(1) and ds.transform == T_UTM
    with rasterio.open(out["prediction"]) as ds:
        assert ds.colormap(1)[5][:3] == (0xC8, 0xB2, 0x7A) and ds.descriptions[0] == "class"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_extent_and_mask_limit_the_output(tmp_path, fitted):
    import geopandas as gpd
    from shapely.geometry import box

    model_dir, _ = fitted
    img, _ = brightness_image(400, 400, seed=7)
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    # extent: output is the covered window of the input grid
    out = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "a.tif", device="cpu",
                         extent="500010,2799850,500100,2799950", tile=128, overlap=16)
    with rasterio.open(out["prediction"]) as ds:
        assert (ds.width, ds.height) == (180, 200)
        assert ds.transform == from_origin(500010.0, 2799950.0, 0.5, 0.5)
    with rasterio.open(tmp_path / "a.tif") as a:
        full = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "full.tif",
                              device="cpu", tile=128, overlap=16)
        with rasterio.open(full["prediction"]) as f:
            same = f.read(1)[100:300, 20:200] == a.read(1)
        assert same.mean() > 0.999
    # mask in another CRS: nodata outside the polygon, window cropped to its bounds
    poly = gpd.GeoDataFrame(geometry=[box(500050, 2799850, 500150, 2799950)], crs=UTM)
    poly.to_crs(4326).to_file(tmp_path / "aoi.gpkg")
    out = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "m.tif", device="cpu",
                         mask=tmp_path / "aoi.gpkg", tile=128, overlap=16)
    with rasterio.open(out["prediction"]) as ds:
        m = ds.read(1)
        assert abs(ds.width - 200) <= 2 and abs(ds.height - 200) <= 2
    inside = (m != 255).mean()
    assert 0.95 < inside <= 1.0
    # no overlap: clear errors naming the file
    with pytest.raises(SatSynthError, match="does not overlap the image"):
        predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "x.tif", device="cpu",
                       extent="0,0,10,10")
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=UTM).to_file(tmp_path / "far.gpkg")
    with pytest.raises(SatSynthError, match="do not overlap the image"):
        predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "x.tif", device="cpu",
                       mask=tmp_path / "far.gpkg")
    assert not (tmp_path / "x.tif").exists()


def test_clear_errors_for_bad_inputs(tmp_path, fitted):
    model_dir, _ = fitted
    img, _ = brightness_image(64, 64)
    write_raster(tmp_path / "one.tif", img[:1], transform=T_UTM)
    with pytest.raises(SatSynthError, match=r"one\.tif: the image has 1 band, but the model was "
                                            r"trained on 3-band"):
        predict_raster(model_dir, tmp_path / "one.tif", tmp_path / "p.tif", device="cpu")
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    with pytest.raises(SatSynthError, match="--overlap 300"):
        predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "p.tif", overlap=300)
    with pytest.raises(SatSynthError, match="image file not found"):
        predict_raster(model_dir, tmp_path / "nope.tif", tmp_path / "p.tif")
    with pytest.raises(SatSynthError, match="GeoPackage"):
        predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "p.tif", vector="p.shp")
    (tmp_path / "junk.tif").write_bytes(b"not a raster")
    with pytest.raises(SatSynthError, match="junk.tif: cannot read image: not a raster GDAL can open"):
        predict_raster(model_dir, tmp_path / "junk.tif", tmp_path / "p.tif")
    # a model folder from a newer SatSynth
    newer = tmp_path / "newer"
    make_model(newer)
    cfg = json.loads((newer / "config.json").read_text())
    cfg["format_version"] = 99
    (newer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SatSynthError, match="upgrade SatSynth"):
        predict_raster(newer, tmp_path / "img.tif", tmp_path / "p.tif")
    # smp models need tiles that are multiples of 32
    smp_dir = tmp_path / "smp"
    cfg = SegmenterConfig(arch="fpn", encoder="resnet18", classes=TABLE,
                          normalization=Normalizer([0] * 3, [255] * 3))
    save_model_dir(smp_dir, "segmenter", cfg.to_dict(),
                   {"model": build_segmenter(cfg).state_dict()})
    with pytest.raises(SatSynthError, match="--tile 500 must be .* multiple of 32"):
        predict_raster(smp_dir, tmp_path / "img.tif", tmp_path / "p.tif", tile=500)
    assert not (tmp_path / "p.tif").exists()


def test_resolution_warning_and_match_resolution(tmp_path, fitted, caplog):
    model_dir, _ = fitted  # trained at 0.5 m
    img, idx = brightness_image(300, 320, seed=9)
    # the same scene at 0.25 m: twice the pixels
    fine = np.repeat(np.repeat(img, 2, axis=1), 2, axis=2)
    fine_idx = np.repeat(np.repeat(idx, 2, axis=0), 2, axis=1)
    t_fine = from_origin(500000.0, 2800000.0, 0.25, 0.25)
    write_raster(tmp_path / "fine.tif", fine, transform=t_fine)
    with caplog.at_level("WARNING", logger="satsynth"):
        predict_raster(model_dir, tmp_path / "fine.tif", tmp_path / "a.tif", device="cpu",
                       tile=128, overlap=16)
    assert "--match-resolution" in caplog.text and "0.25" in caplog.text
    out = predict_raster(model_dir, tmp_path / "fine.tif", tmp_path / "b.tif", device="cpu",
                         tile=128, overlap=16, match_resolution=True,
                         confidence=tmp_path / "b_conf.tif")
    with rasterio.open(out["prediction"]) as ds:
        pred = ds.read(1)
        assert ds.transform == t_fine and (ds.width, ds.height) == (640, 600)
    assert (pred == TABLE.index_to_id_lut()[fine_idx]).mean() > 0.95
    with rasterio.open(out["confidence"]) as ds:
        assert ds.read(1).min() > 0
    # no CRS: the resolution cannot be matched, and says why
    with rasterio.open(tmp_path / "plain.png", "w", driver="PNG", width=64, height=64, count=3,
                       dtype="uint8") as ds:
        ds.write(img[:, :64, :64])
    with pytest.raises(SatSynthError, match="the image has no CRS"):
        predict_raster(model_dir, tmp_path / "plain.png", tmp_path / "c.tif",
                       match_resolution=True)
    out = predict_raster(model_dir, tmp_path / "plain.png", tmp_path / "c.tif", device="cpu")
    with rasterio.open(out["prediction"]) as ds:
        assert ds.crs is None and ds.read(1).max() < 255


# --- vectors ---------------------------------------------------------------------------------


def test_streamed_polygons_match_whole_raster_polygonization(tmp_path):
    """Polygons split at block edges are merged: same regions as polygonizing all at once."""
    import geopandas as gpd
    from rasterio.crs import CRS
    from rasterio.features import shapes

    from satsynth.predict.vectorize import StreamingVectorizer

    _, idx = brightness_image(333, 250, seed=11)
    ids = TABLE.index_to_id_lut()[idx]
    ids[:40, :30] = 255
    v = StreamingVectorizer(tmp_path / "v.gpkg", crs=CRS.from_string(UTM), transform=T_UTM,
                            table=TABLE, layer="v")
    for r in range(0, 333, 16):
        v.add_block(r, ids[r:r + 16], last=r + 16 >= 333)
    v.close()
    got = gpd.read_file(tmp_path / "v.gpkg")
    whole = [(int(val), geom) for geom, val in shapes(ids, mask=ids != 255, transform=T_UTM)]
    assert len(got) == len(whole) == v.features
    assert got.crs.to_epsg() == 32640 and got.geometry.is_valid.all()
    for cid in (1, 5, 9):
        px = int((ids == cid).sum())
        sel = got[got.class_id == cid]
        assert int(sel.pixels.sum()) == px
        assert sel.area_m2.sum() == pytest.approx(px * 0.25, rel=1e-9)
        assert set(sel.class_name) == {TABLE.classes[TABLE.ids.index(cid)].name}
    # the same regions, one by one: equal sorted areas and equal per-class unions
    import shapely

    whole_area = sorted(round(shapely.geometry.shape(g).area, 3) for _, g in whole)
    assert sorted(got.area_m2.round(3)) == whole_area


def test_crs_units_to_metres_one_rule_for_resolution_areas_and_simplify(tmp_path):
    """Feet are converted, and a CRS that declares no linear unit (a local engineering CRS) is
    read as metres by every caller (the model-resolution check and the polygon writer used to
    stop with a rasterio traceback on it)."""
    import geopandas as gpd
    from rasterio.crs import CRS

    from satsynth.predict.source import ground_resolution, model_resolution
    from satsynth.predict.vectorize import StreamingVectorizer, simplify_tolerance_note
    from satsynth.raster import metres_per_unit

    feet, local = CRS.from_epsg(2229), CRS.from_wkt('LOCAL_CS["site grid",UNIT["unknown",1]]')
    assert metres_per_unit(feet) == pytest.approx(0.3048006096)
    assert metres_per_unit(local) == 1.0 and metres_per_unit(CRS.from_string(UTM)) == 1.0
    assert ground_resolution(feet, T_UTM, 10, 10) == pytest.approx((0.5 * 0.3048006096,) * 2)
    assert ground_resolution(local, T_UTM, 10, 10) == (0.5, 0.5)
    assert model_resolution(local.to_wkt(), [0.5, 0.5], local, T_UTM, 10, 10) == (0.5, 0.5)
    assert simplify_tolerance_note(feet).startswith("US survey foot (factor 0.3048")
    assert simplify_tolerance_note(local) == "metres"
    ids = np.full((8, 8), 255, np.uint8)
    ids[2:6, 2:6] = 1
    for crs, m2 in ((feet, 16 * 0.25 * 0.3048006096 ** 2), (local, 16 * 0.25)):
        v = StreamingVectorizer(tmp_path / f"{crs.linear_units}.gpkg", crs=crs, transform=T_UTM,
                                table=TABLE, layer="v", simplify=0.1)
        v.add_block(0, ids, last=True)
        v.close()
        assert gpd.read_file(v.path).area_m2.sum() == pytest.approx(m2, rel=1e-9)


def test_vector_output_areas_simplify_and_min_area(tmp_path, fitted):
    import geopandas as gpd

    model_dir, _ = fitted
    img, _ = brightness_image(500, 700, seed=12)
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    out = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "p.tif",
                         vector=tmp_path / "p.gpkg", tile=256, overlap=32, device="cpu")
    with rasterio.open(out["prediction"]) as ds:
        pred = ds.read(1)
    gdf = gpd.read_file(out["vector"])
    assert gdf.crs.to_epsg() == 32640
    assert {"class_id", "class_name", "pixels", "area_m2"} <= set(gdf.columns)
    for cid in (1, 5, 9):
        want = (pred == cid).sum() * 0.25
        assert gdf[gdf.class_id == cid].area_m2.sum() == pytest.approx(want, rel=0.01)
    # their style: the one beside the raster of the same name, categorized on class_id with the
    # class table's names and colours
    assert sorted(p.name for p in tmp_path.glob("*.qml")) == ["p.qml"]
    qml = (tmp_path / "p.qml").read_text()
    assert 'type="categorizedSymbol" attr="class_id"' in qml
    for c in TABLE.classes:
        rgba = ",".join(str(v) for v in (*c.color, 255))
        assert f'<category value="{c.id}" symbol="{TABLE.classes.index(c)}"' in qml
        assert f'<Option name="color" type="QString" value="{rgba}"/>' in qml
    assert 'label="roof &amp; tower"' in qml
    # simplified and filtered: still within 1% of the class areas for the big regions; polygons
    # named otherwise get their own copy of the style
    out2 = predict_raster(model_dir, tmp_path / "img.tif", tmp_path / "q.tif",
                          vector=tmp_path / "zones.gpkg", tile=256, overlap=32, device="cpu",
                          simplify=0.5, min_area=5.0)
    assert (tmp_path / "zones.qml").read_text() == (tmp_path / "q.qml").read_text() == qml
    simp = gpd.read_file(out2["vector"])
    assert simp.area_m2.min() >= 5.0
    assert simp.geometry.count_coordinates().sum() < gdf.geometry.count_coordinates().sum()
    total = simp.area_m2.sum()
    assert total == pytest.approx((pred != 255).sum() * 0.25, rel=0.01)


# --- real georeferenced samples ----------------------------------------------------------------

SAMPLES = [("sample_geotiff.tif", 32616), ("road_mask_input.tif", 4326),
           ("sample_geotiff_custom_proj.tif", None)]


@pytest.mark.realdata
@pytest.mark.parametrize("name,epsg", SAMPLES)
def test_spacenet_samples_keep_their_crs_and_vector_areas(tmp_path, name, epsg):
    import geopandas as gpd
    import pyproj

    src_path = SPACENET / name
    if not src_path.is_file():
        pytest.skip(f"{src_path} absent (shared datasets not available)")
    with rasterio.open(src_path) as src:
        data = src.read()
        crs, transform, nodata = src.crs, src.transform, src.nodata
        count, dtype = src.count, src.dtypes[0]
    valid = data[0] != nodata if nodata is not None else np.ones(data.shape[1:], bool)
    lo = float(np.percentile(data[:, valid], 2))
    hi = float(np.percentile(data[:, valid], 98))
    table = ClassTable.from_dict([{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}])
    sub = data[:, :128, :128]
    mid = np.median(sub)
    labels = (sub.mean(axis=0) > mid).astype(np.uint8)
    model_dir, _ = make_model(tmp_path / "seg", bands=count, encoder="w2d0", table=table,
                              low=lo, high=hi, dtype=dtype, crs=crs.to_string(),
                              pixel_size=abs(transform.a), fit_to=(sub, labels))
    out = predict_raster(model_dir, src_path, tmp_path / "pred.tif", vector=tmp_path / "p.gpkg",
                         tile=256, overlap=32, device="cpu")
    with rasterio.open(out["prediction"]) as ds:
        pred = ds.read(1)
        assert ds.crs == crs and ds.transform.almost_equals(transform)
        assert ds.shape == data.shape[1:]
        if epsg:
            assert ds.crs.to_epsg() == epsg
        else:  # the custom Albers projection survives as WKT
            assert ds.crs.to_epsg() is None and "Albers" in ds.crs.to_wkt()
    assert (pred[~valid] == 255).all()
    assert {0, 1} <= set(np.unique(pred[valid]))
    gdf = gpd.read_file(out["vector"])
    assert pyproj.CRS(gdf.crs).equals(pyproj.CRS.from_wkt(crs.to_wkt()), ignore_axis_order=True)
    # class areas from the polygons == class pixel areas (geodesic per row for degrees)
    if crs.is_geographic:
        geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
        row_area = []
        for r in range(pred.shape[0]):
            x0, y0 = transform @ (0, r)
            x1, y1 = transform @ (1, r + 1)
            row_area.append(abs(geod.polygon_area_perimeter([x0, x1, x1, x0],
                                                            [y0, y0, y1, y1])[0]))
        row_area = np.asarray(row_area)
    else:
        row_area = np.full(pred.shape[0], abs(transform.a * transform.e))
    for cid in (0, 1):
        want = float(((pred == cid).sum(axis=1) * row_area).sum())
        got = gdf[gdf.class_id == cid].area_m2.sum()
        assert got == pytest.approx(want, rel=0.01), (cid, got, want)


# --- CLI: progress, cancellation, memory ----------------------------------------------------------


def _procedural_raster(path: Path, size: int, block: int = 512, height: int | None = None
                       ) -> Path:
    """A size x height 3-band uint8 tiled GeoTIFF written by strips (no whole-raster array)."""
    height = height or size
    with rasterio.open(path, "w", driver="GTiff", width=size, height=height, count=3,
                       dtype="uint8", crs=UTM, transform=T_UTM, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate") as ds:
        xx = np.arange(size, dtype=np.float32)[None, :]
        for r in range(0, height, block):
            yy = np.arange(r, min(r + block, height), dtype=np.float32)[:, None]
            v = (127 + 100 * np.sin(xx / 97.0) * np.cos(yy / 61.0)).astype(np.uint8)
            ds.write(np.stack([v, v, v]), window=rasterio.windows.Window(0, r, size, v.shape[0]))
    return path


def test_cli_reports_json_progress_and_outputs(tmp_path, fitted):
    model_dir, _ = fitted
    img, _ = brightness_image(300, 300)
    write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    res = subprocess.run(SATSYNTH + ["predict", str(model_dir), "--image",
                                     str(tmp_path / "img.tif"), "--out", str(tmp_path / "p.tif"),
                                     "--tile", "128", "--overlap", "16", "--device", "cpu",
                                     "--progress", "json"],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    prog = [e for e in events if e["event"] == "progress" and e["stage"] == "predict"]
    assert prog[-1]["fraction"] == 1.0 and prog[-1]["done"] == prog[-1]["total"] == 9
    assert "rate" in prog[-1] and "eta_s" in prog[-1]
    assert events[-1]["event"] == "done"
    assert set(events[-1]["outputs"]) == {"prediction", "style", "pixels", "seconds",
                                          "runtime"}
    assert Path(events[-1]["outputs"]["style"]).is_file()
    bad = subprocess.run(SATSYNTH + ["predict", str(model_dir), "--image",
                                     str(tmp_path / "img.tif"), "--out", str(tmp_path / "q.tif"),
                                     "--extent", "1,2,3"], capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert bad.returncode == 2 and "--extent" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_takes_negative_extents_as_values():
    from satsynth.cli import build_parser

    args = build_parser().parse_args(["predict", "seg", "--image", "i.tif", "--out", "o.tif",
                                      "--extent", "-117.2,36.1,-117.1,36.2", "--overlap", "32"])
    assert args.extent == "-117.2,36.1,-117.1,36.2" and args.overlap == 32


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cancel_leaves_no_output_file(tmp_path, fitted, sig):
    model_dir, _ = fitted
    _procedural_raster(tmp_path / "big.tif", 2048)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        SATSYNTH + ["predict", str(model_dir), "--image", str(tmp_path / "big.tif"), "--out",
                    str(out_dir / "pred.tif"), "--confidence", str(out_dir / "conf.tif"),
                    "--vector", str(out_dir / "pred.gpkg"), "--tile", "128", "--overlap", "16",
                    "--batch", "2", "--device", "cpu", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        seen = 0
        for line in proc.stdout:  # type: ignore[union-attr]
            ev = json.loads(line)
            if ev["event"] == "progress" and ev["stage"] == "predict" and ev["done"] >= 20:
                seen = ev["done"]
                break
        assert seen, "no progress before the end"
        t0 = time.monotonic()
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert '"cancelled": true' in rest
    assert list(out_dir.iterdir()) == []


_PEAK_RSS = (
    "def peak_mb():\n"
    "    # VmHWM is this process's own peak; ru_maxrss also counts the parent's memory at spawn\n"
    "    try:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM:'):\n"
    "                return int(line.split()[1]) / 1024\n"
    "    except OSError:\n"
    "        pass\n"
    "    import resource\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n")


@pytest.mark.slow
def test_memory_is_bounded_on_a_large_raster(tmp_path):
    """8192 x 8192 x 3: the whole raster as float32 would be 805 MB and its class probabilities
    another 537 MB. The streamed run stays within a few hundred MB of the same run on a 1024 x
    1024 raster (the imports, the model and the runtime's own fixed cost: ONNX Runtime's library
    and arena add about 150 MB to PyTorch's), and a raster four times as tall (same width) needs
    about the same memory: no array grows with the area. (Resident memory rises over the first
    ~8000 rows, while GDAL's 64 MB block cache and the allocator warm up, then stays flat: shorter rasters compared with this one showed 40-70 MB
    of warm-up that is not growth. Once warm, the peak still varies by up to ~50 MB from run to
    run, so the taller raster makes any growth with the rows stand well above that.)"""
    table = ClassTable.from_dict([{"id": 0, "name": "a"}, {"id": 1, "name": "b"}])
    model_dir, _ = make_model(tmp_path / "seg", encoder="w1d0", table=table)  # one 1x1 conv
    with rasterio.Env(GDAL_CACHEMAX=64):
        _procedural_raster(tmp_path / "tall.tif", 8192, height=32768)
        _procedural_raster(tmp_path / "short.tif", 8192)
        _procedural_raster(tmp_path / "small.tif", 1024)

    def peak(name: str) -> float:
        work = (f"predict_raster({str(model_dir)!r}, {str(tmp_path / f'{name}.tif')!r}, "
                f"{str(tmp_path / f'{name}_pred.tif')!r}, "
                f"confidence={str(tmp_path / f'{name}_conf.tif')!r}, tile=512, overlap=32, "
                "batch=4, device='cpu')\n")
        code = (_PEAK_RSS + "from satsynth.predict.predict import predict_raster\n" + work
                + "print(peak_mb())\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, env=ENV)
        assert res.returncode == 0, res.stderr
        return float(res.stdout.split()[-1])

    base, short, tall = peak("small"), peak("short"), peak("tall")
    with rasterio.open(tmp_path / "tall_pred.tif") as ds:
        assert ds.shape == (32768, 8192)
        assert ds.read(1, window=rasterio.windows.Window(4000, 32000, 8, 8)).max() < 255
    msg = f"peak RSS: 1024^2 {base:.0f} MB, 8192^2 {short:.0f} MB, 8192x32768 {tall:.0f} MB"
    print(msg)
    assert tall - base < 200, msg  # measured: +43 MB (2-core reference machine)
    # four times the area, same width: nothing may grow with the rows. One byte per pixel kept
    # would add 201 MB here (+81-108 MB from 8192x1024 to 8192^2 before the malloc arenas were
    # capped, from the reader thread's fragmented arena); run-to-run noise is up to ~50 MB
    assert tall - short < 96, msg
