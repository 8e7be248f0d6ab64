"""satsynth prepare with class-id rasters: chips, georeference, split, normalization, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasters import ORIGIN, write_raster

from satsynth import progress
from satsynth.data.classes import ClassTable
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.errors import Cancelled, SatSynthError


def scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..3 in stripes/blocks and an RGB image that depends on label and position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = (1 + ((yy // 37 + xx // 53) % 3)).astype(np.uint8)
    img = np.stack([labels * 60 + (xx % 7), (yy % 251).astype(np.int64),
                    rng.integers(0, 256, (h, w))]).astype(np.uint8)
    return img, labels


def test_raster_labels_give_chips_with_their_window_georeference(tmp_path):
    img, lab = scene(300, 260)
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    out = prepare_dataset(tmp_path / "ds", images=[ip], labels=[lp], chip_size=64,
                          val_fraction=0.25, block_size=1, min_labeled=0.5)
    store = ChipStore(out)
    m = store.meta
    assert m.crs == "EPSG:32640" and m.pixel_size == (0.5, 0.5)
    assert m.classes.ids == [1, 2, 3] and m.bands == 3 and m.dtype == "uint8"
    lut = m.classes.id_to_index_lut()
    n = 0
    for split in ("train", "val"):
        s = store.split(split)
        for k in range(len(s)):
            a, b, c, d, e, f = s.transforms[k]
            col, row = (c - ORIGIN.c) / 0.5, (ORIGIN.f - f) / 0.5
            assert col == int(col) and row == int(row)
            col, row = int(col), int(row)
            # the chip transform is the window transform
            win = Window(col, row, 64, 64)
            assert tuple(s.transforms[k]) == tuple(rasterio.windows.transform(win, ORIGIN))[:6]
            np.testing.assert_array_equal(s.images[k], img[:, row:row + 64, col:col + 64])
            np.testing.assert_array_equal(s.labels[k], lut[lab[row:row + 64, col:col + 64]])
            n += 1
    # 300 x 260 px: rows 0,64,..,192 + edge 236; cols 0,..,192 + edge 196 -> 5 x 5 candidates
    assert 0 < len(store.split("val")) < n <= 25
    # the footprint index matches the chips
    import geopandas as gpd

    idx = gpd.read_file(out / "chips.gpkg")
    assert len(idx) == n and idx.crs.to_epsg() == 32640
    px_cols = [c for c in idx.columns if c.startswith("px_")]
    assert len(px_cols) == 3
    for split in ("train", "val"):
        assert idx[idx.split == split][px_cols].to_numpy().sum(0).tolist() == m.class_pixels[split]
    # edge chips exist: some chip starts at row 236 and col 196
    assert (idx.row_off == 236).any() and (idx.col_off == 196).any()


def test_spatial_split_never_overlaps_even_with_overlapping_strides(tmp_path):
    img, lab = scene(600, 520, seed=1)
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    out = prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64, stride=32,
                          val_fraction=0.3, block_size=2, seed=5)
    import geopandas as gpd
    import shapely

    idx = gpd.read_file(out / "chips.gpkg")
    tr = np.array(list(idx[idx.split == "train"].geometry), dtype=object)
    va = np.array(list(idx[idx.split == "val"].geometry), dtype=object)
    assert len(tr) > 0 and len(va) > 0
    inter = shapely.area(shapely.intersection(tr[:, None], va[None, :]))
    assert inter.max() == 0.0  # footprints may touch but never overlap
    assert 0.1 < len(va) / (len(tr) + len(va)) < 0.7
    # same seed, same split; another seed, another split
    out2 = prepare_dataset(tmp_path / "ds2", images=ip, labels=lp, chip_size=64, stride=32,
                           val_fraction=0.3, block_size=2, seed=5)
    np.testing.assert_array_equal(ChipStore(out2).split("val").transforms,
                                  ChipStore(out).split("val").transforms)
    out3 = prepare_dataset(tmp_path / "ds3", images=ip, labels=lp, chip_size=64, stride=32,
                           val_fraction=0.3, block_size=2, seed=6)
    assert not np.array_equal(ChipStore(out3).split("val").transforms[:, 2:],
                              ChipStore(out).split("val").transforms[:, 2:])


def test_16bit_normalization_is_fit_on_valid_training_pixels_and_stored(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(1000, 5001, (2, 256, 256)).astype(np.uint16)
    img[:, :, :64] = 0  # nodata strip
    lab = np.ones((256, 256), np.uint8)
    lab[128:, :] = 2
    ip = write_raster(tmp_path / "img.tif", img, nodata=0)
    lp = write_raster(tmp_path / "lab.tif", lab)
    out = prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64, val_fraction=0.25,
                          block_size=1, min_labeled=0.0)
    store = ChipStore(out)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["dtype"] == "uint16" and store.split("train").images.dtype == np.uint16
    # chips of the nodata strip have no labeled pixel and are skipped
    assert (store.split("train").transforms[:, 2] >= ORIGIN.c + 64 * 0.5).all()
    tr = store.split("train").images
    valid = np.asarray(tr).reshape(len(tr), 2, -1).transpose(1, 0, 2).reshape(2, -1)
    low = np.percentile(valid, 2, axis=1)
    high = np.percentile(valid, 98, axis=1)
    n = store.normalizer
    assert meta["normalization"]["method"] == "percentile-2-98"
    np.testing.assert_allclose(n.low, low, rtol=0.01)
    np.testing.assert_allclose(n.high, high, rtol=0.01)
    assert 1000 <= n.low[0] < 1200 and 4800 < n.high[0] <= 5000
    y = n.to_model(np.asarray(tr[0]))
    assert y.min() >= -1 and y.max() <= 1 and y.std() > 0.3


def test_float_imagery_with_nan_holes(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.normal(0.3, 0.05, (4, 128, 128)).astype(np.float32)
    img[:, :64, :64] = np.nan  # no nodata value declared: NaN is still not a pixel value
    _, lab = scene(128, 128)
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    store = ChipStore(prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64,
                                      val_fraction=0))
    assert store.meta.dtype == "float32" and store.meta.bands == 4
    assert len(store.split("train")) == 3  # the NaN chip is skipped
    assert np.isfinite(np.asarray(store.split("train").images)).all()
    assert all(0.15 < lo < 0.3 < hi < 0.45 for lo, hi in zip(store.normalizer.low,
                                                             store.normalizer.high, strict=True))


def test_nodata_and_ignore_areas_are_not_trained_on(tmp_path):
    img, lab = scene(256, 256)
    lab[:128, :128] = 255  # ignore
    img_nd = np.maximum(img, 1)  # 0 is nodata here
    img_nd[:, 128:, 128:] = 0
    ip = write_raster(tmp_path / "img.tif", img_nd, nodata=0)
    lp = write_raster(tmp_path / "lab.tif", lab)
    out = prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64, val_fraction=0,
                          min_labeled=0.5)
    s = ChipStore(out).split("train")
    offs = {(int(round((t[2] - ORIGIN.c) / 0.5)), int(round((ORIGIN.f - t[5]) / 0.5)))
            for t in s.transforms}
    assert len(offs) == 8  # 16 chips minus 4 ignored minus 4 nodata
    assert all(not (c < 128 and r < 128) and not (c >= 128 and r >= 128) for c, r in offs)
    # a chip half in the nodata area keeps its valid half; the nodata half is ignore (255)
    out2 = prepare_dataset(tmp_path / "ds2", images=ip, labels=lp, chip_size=64, stride=32,
                           val_fraction=0, min_labeled=0.5)
    s2 = ChipStore(out2).split("train")
    k = [i for i, t in enumerate(s2.transforms)
         if round((t[2] - ORIGIN.c) / 0.5) == 96 and round((ORIGIN.f - t[5]) / 0.5) == 192][0]
    assert (s2.labels[k][:, 32:] == 255).all() and (s2.labels[k][:, :32] != 255).all()


def test_val_sources_go_wholly_to_validation_and_max_chips_caps(tmp_path):
    pairs = []
    for name, seed in (("north", 0), ("south", 1), ("east", 2)):
        img, lab = scene(192, 192, seed)
        t = ORIGIN @ Affine.translation(seed * 1000, 0)
        pairs.append((write_raster(tmp_path / f"{name}_img.tif", img, transform=t),
                      write_raster(tmp_path / f"{name}_lab.tif", lab, transform=t)))
    out = prepare_dataset(tmp_path / "ds", images=[p[0] for p in pairs],
                          labels=[p[1] for p in pairs], chip_size=64, val_sources="south,east")
    store = ChipStore(out)
    assert set(store.split("val").sources.tolist()) == {1, 2}
    assert set(store.split("train").sources.tolist()) == {0}
    assert len(store.split("train")) == 9 and len(store.split("val")) == 18
    assert [s["val_source"] for s in store.meta.sources] == [False, True, True]
    out = prepare_dataset(tmp_path / "ds2", images=[p[0] for p in pairs],
                          labels=[p[1] for p in pairs], chip_size=64, val_fraction=0.2,
                          max_chips=10)
    store = ChipStore(out)
    assert len(store) == 10 and len(store.split("val")) >= 1
    with pytest.raises(SatSynthError, match="matches none"):
        prepare_dataset(tmp_path / "ds3", images=[p[0] for p in pairs],
                        labels=[p[1] for p in pairs], chip_size=64, val_sources="west")


def test_overlapping_georeferenced_images_never_share_ground_across_splits(tmp_path):
    """Two images of partly the same ground: training chips of one that overlap validation
    chips of the other are dropped."""
    img, lab = scene(256, 256)
    shifted = ORIGIN @ Affine.translation(100, 60)  # overlaps the first image
    a = (write_raster(tmp_path / "west.tif", img), write_raster(tmp_path / "west_lab.tif", lab))
    b = (write_raster(tmp_path / "east.tif", img, transform=shifted),
         write_raster(tmp_path / "east_lab.tif", lab, transform=shifted))
    out = prepare_dataset(tmp_path / "ds", images=[a[0], b[0]], labels=[a[1], b[1]],
                          chip_size=64, val_sources="east")
    import geopandas as gpd
    import shapely

    idx = gpd.read_file(out / "chips.gpkg")
    tr = np.array(list(idx[idx.split == "train"].geometry), dtype=object)
    va = np.array(list(idx[idx.split == "val"].geometry), dtype=object)
    assert len(va) == 16 and 0 < len(tr) < 16
    assert shapely.area(shapely.intersection(tr[:, None], va[None, :])).max() == 0.0


def test_small_tiles_give_the_same_dataset_as_one_big_read(tmp_path):
    """Reading by windows (bounded memory) must not change a single chip or count."""
    img, lab = scene(333, 301, seed=4)
    lab[:40, :] = 255
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    kw = dict(images=ip, labels=lp, chip_size=32, stride=24, val_fraction=0.2, seed=1)
    a = ChipStore(prepare_dataset(tmp_path / "a", tile_span=4096, **kw))
    b = ChipStore(prepare_dataset(tmp_path / "b", tile_span=70, **kw))
    assert a.meta.class_pixels == b.meta.class_pixels
    for split in ("train", "val"):
        sa, sb = a.split(split), b.split(split)
        order_a = np.lexsort(sa.transforms[:, [2, 5]].T)
        order_b = np.lexsort(sb.transforms[:, [2, 5]].T)
        np.testing.assert_array_equal(sa.transforms[order_a], sb.transforms[order_b])
        np.testing.assert_array_equal(sa.images[order_a], sb.images[order_b])
        np.testing.assert_array_equal(sa.labels[order_a], sb.labels[order_b])


def test_inferred_class_table_and_given_table(tmp_path):
    img, lab = scene(128, 128)
    lab[lab == 3] = 9
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    store = ChipStore(prepare_dataset(tmp_path / "a", images=ip, labels=lp, chip_size=64,
                                      val_fraction=0))
    assert store.classes.ids == [1, 2, 9]
    table = ClassTable.from_dict({"classes": [{"id": 9, "name": "water", "color": "#0000ff"},
                                              {"id": 1, "name": "sand"},
                                              {"id": 2, "name": "road"}]})
    store = ChipStore(prepare_dataset(tmp_path / "b", images=ip, labels=lp, chip_size=64,
                                      classes=table, val_fraction=0))
    assert store.classes.names == ["water", "sand", "road"]
    labels = np.asarray(store.split("train").labels)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    # index 0 (water) where the raster says 9
    t = store.split("train").transforms[0]
    r, c = int(round((ORIGIN.f - t[5]) / 0.5)), int(round((t[2] - ORIGIN.c) / 0.5))
    np.testing.assert_array_equal(labels[0] == 0, lab[r:r + 64, c:c + 64] == 9)


def test_existing_folder_is_not_overwritten_and_cancel_leaves_nothing(tmp_path):
    img, lab = scene(128, 128)
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    mine = tmp_path / "my_documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(SatSynthError, match="not a SatSynth dataset"):
        prepare_dataset(mine, images=ip, labels=lp, chip_size=64)
    assert (mine / "thesis.txt").read_text() == "precious"
    progress.request_cancel()
    try:
        with pytest.raises(Cancelled):
            prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64)
    finally:
        progress.reset_cancel()
    assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "lab.tif", "my_documents"]
    # a dataset folder may be replaced by a new run
    prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=64, val_fraction=0)
    prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=32, val_fraction=0)
    assert ChipStore(tmp_path / "ds").meta.chip_size == 32


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satsynth", *args], capture_output=True,
                          text=True)


def test_cli_prepare_json_protocol_and_info(tmp_path):
    img, lab = scene(256, 256)
    ip = write_raster(tmp_path / "img.tif", img)
    lp = write_raster(tmp_path / "lab.tif", lab)
    r = _run("prepare", "--image", str(ip), "--labels", str(lp), "--out", str(tmp_path / "ds"),
             "--chip-size", "64", "--block-size", "1", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert {e["event"] for e in events[:-1]} == {"progress"}
    assert any(e["stage"] == "prepare: writing chips" for e in events[:-1])
    done = events[-1]
    assert done["event"] == "done"
    o = done["outputs"]
    assert o["dataset"] == str(tmp_path / "ds") and o["chips"].endswith("chips.gpkg")
    assert o["train"] + o["val"] == 16 and o["val"] > 0 and o["classes"] == 3
    r = _run("info", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    assert "EPSG:32640" in r.stdout and "64 x 64 px" in r.stdout and "3 x uint8" in r.stdout
    assert "class 2" in r.stdout
    r = _run("info", str(tmp_path / "ds"), "--json")
    info = json.loads(r.stdout)
    assert info["chips"] == {"train": o["train"], "val": o["val"]}
    shares = [c["train_share"] for c in info["classes"]]
    assert abs(sum(shares) - 1) < 1e-3 and min(shares) > 0.2
    # a user error: one line on stderr, exit code 2, an error event
    r = _run("prepare", "--image", str(ip), "--labels", str(tmp_path / "missing.tif"), "--out",
             str(tmp_path / "ds2"), "--progress", "json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    ev = json.loads(r.stdout.splitlines()[-1])
    assert ev["event"] == "error" and "missing.tif" in ev["message"]
    assert "not found" in ev["message"]
