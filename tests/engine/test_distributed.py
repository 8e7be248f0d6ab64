"""synthesize and predict across processes (torchrun / accelerate launch; 2 CPU processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import ENV, T_UTM, TABLE, TINY_GENERATOR, brightness_image, make_model, make_store
from rasters import write_raster

from satsynth.distributed import Processes, share
from satsynth.predict.bands import BandWriter
from satsynth.predict.forward import TorchForward
from satsynth.predict.source import TileReader
from satsynth.predict.tiles import run_tiles
from satsynth.predict.windows import Region, TilePlan, rows_for_rank
from satsynth.predict.writer import PredictionWriter
from satsynth.raster import TileGrid

TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(*args: str, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m satsynth ARGS``: N CPU processes (gloo).
    (``accelerate launch --cpu --num_processes N`` starts N CPU processes only through mpirun;
    without MPI it runs one.)"""
    if not TORCHRUN.is_file():
        pytest.skip("torchrun launcher absent")
    return subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), "-m", "satsynth",
         *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_share_and_rows_for_rank_cover_every_row_once():
    assert [list(share(5, r, 2)) for r in range(2)] == [[0, 1], [2, 3, 4]]
    assert [len(share(2, r, 3)) for r in range(3)] == [0, 1, 1]
    for height, tile, overlap in ((1000, 128, 32), (517, 64, 32), (130, 128, 64), (64, 64, 0)):
        grid = TileGrid.for_region(height, 300, tile, overlap)
        for world in (1, 2, 3, 7):
            bands = [rows_for_rank(grid, r, world) for r in range(world)]
            owned = [(y0, y1) for _, y0, y1 in bands if y1 > y0]
            assert owned[0][0] == 0 and owned[-1][1] == height
            assert all(a[1] == b[0] for a, b in zip(owned, owned[1:], strict=False))
            for rows, y0, y1 in bands:
                if y1 > y0:  # every tile covering an owned row is run
                    starts = grid.rows.starts
                    need = {t for t, s in enumerate(starts) if s < y1 and s + grid.tile_h > y0}
                    assert need <= set(rows)


@pytest.mark.parametrize("world,tile,overlap,height", [(2, 64, 16, 300), (3, 48, 24, 211),
                                                       (4, 32, 16, 100)])
def test_bands_assemble_to_the_single_process_raster(tmp_path, world, tile, overlap, height):
    """In-process check of the band plan on irregular tilings: every process's band, run over
    its tile rows and written to its part, equals the same rows of a single run, bit for bit
    (classes and confidences)."""
    import torch

    img, idx = brightness_image(height, 150, seed=world)
    src_path = write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    make_model(tmp_path / "m", fit_to=(img[:, :64, :64], idx[:64, :64]))
    from satsynth.segmenter.model import load_segmenter

    model, cfg = load_segmenter(tmp_path / "m", torch.device("cpu"))
    region = Region(0, 0, height, 150)
    cpu = torch.device("cpu")
    plan = TilePlan(forward=TorchForward(model, cpu, amp=False), device=cpu,
                    num_classes=len(TABLE), tile=tile, overlap=overlap, batch=3, multiple=1,
                    lut=TABLE.index_to_id_lut())
    with rasterio.open(src_path) as src, torch.inference_mode():
        reader = TileReader(src, [1, 2, 3], cfg.normalization, src_path)
        whole = PredictionWriter(tmp_path / "one.tif", width=150, height=height, crs=src.crs,
                                 transform=src.transform, confidence_path=tmp_path / "one.c.tif")
        run_tiles(reader, region, whole, plan)
        whole.close()
        grid = TileGrid.for_region(height, 150, tile, overlap)
        parts = []
        for rank in range(world):
            rows, y0, y1 = rows_for_rank(grid, rank, world)
            if y1 == y0:
                continue
            band = BandWriter(tmp_path / f"part{rank}.tif", y0, y1, 150, confidence=True)
            run_tiles(reader, region, band, plan, tile_rows=rows)
            band.close()
            assert band.complete
            parts.append((y0, y1, rank))
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "one.c.tif") as c:
        ids, conf = a.read(1), c.read(1)
    for y0, y1, rank in parts:
        with rasterio.open(tmp_path / f"part{rank}.tif") as p, \
                rasterio.open(tmp_path / f"part{rank}.conf.tif") as pc:
            np.testing.assert_array_equal(p.read(1), ids[y0:y1])
            np.testing.assert_array_equal(pc.read(1), conf[y0:y1])


def test_single_process_needs_no_process_group():
    from satsynth.distributed import processes

    p = processes("cpu")
    assert isinstance(p, Processes) and (p.rank, p.world, p.state) == (0, 1, None)
    assert not p.distributed and p.shared(5) == 5


@pytest.mark.slow
def test_predict_two_processes_equals_one_process_byte_for_byte(tmp_path):
    img, idx = brightness_image(420, 260, seed=3)
    image = write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    model, _ = make_model(tmp_path / "seg", fit_to=(img[:, :96, :96], idx[:96, :96]))
    common = ["--image", str(image), "--tile", "128", "--overlap", "32", "--batch", "4",
              "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "satsynth", "predict", str(model), *common,
                          "--out", str(tmp_path / "one.tif"), "--confidence",
                          str(tmp_path / "one_conf.tif"), "--vector", str(tmp_path / "one.gpkg"),
                          "--progress", "quiet"], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("predict", str(model), *common, "--out", str(tmp_path / "two.tif"),
                 "--confidence", str(tmp_path / "two_conf.tif"), "--vector",
                 str(tmp_path / "two.gpkg"), "--progress", "json")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 0 of 2: rows 0-" in two.stderr and "process 1 of 2: rows " in two.stderr
    for a, b in (("one.tif", "two.tif"), ("one_conf.tif", "two_conf.tif"),
                 ("one.qml", "two.qml"), ("one.tif.aux.xml", "two.tif.aux.xml")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes(), a
    import geopandas as gpd

    p1, p2 = gpd.read_file(tmp_path / "one.gpkg"), gpd.read_file(tmp_path / "two.gpkg")
    assert len(p1) == len(p2) > 3
    assert p1.geometry.union_all().symmetric_difference(p2.geometry.union_all()).area == 0
    assert sorted(p1["class_id"]) == sorted(p2["class_id"])
    # one done event per process, no scratch or temporary left beside the outputs
    events = [json.loads(x) for x in two.stdout.splitlines() if x.startswith("{")]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 2 and {e["outputs"]["prediction"] for e in done} == {str(tmp_path / "two.tif")}
    assert all(e.get("stage") != "predict" or e["fraction"] <= 1 for e in events)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_synthesize_two_processes_write_one_complete_georeferenced_folder(tmp_path):
    from satsynth.data.store import ChipStore
    from satsynth.generator.train import run_training

    model = run_training(make_store(tmp_path / "ds", n_train=8, n_val=2, size=16), tmp_path / "gen",
                         steps=3, **dict(TINY_GENERATOR, batch_size=2))["model"]
    args = [str(model), "--count", "7", "--batch-size", "2", "--steps", "3", "--sampler", "ddim",
            "--seed", "5", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "satsynth", "synthesize", *args, "--out",
                          str(tmp_path / "one"), "--progress", "quiet"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("synthesize", *args, "--out", str(tmp_path / "two"), "--progress", "json")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = ChipStore(tmp_path / "one"), ChipStore(tmp_path / "two")
    assert b.meta.counts == {"train": 7} and b.meta.crs == "EPSG:32640"
    imgs = np.asarray(b.split("train").images)
    # distinct seeds and conditions: no two pairs alike; the set is the single-process one
    assert len({im.tobytes() for im in imgs}) == 7
    np.testing.assert_array_equal(imgs, np.asarray(a.split("train").images))
    np.testing.assert_array_equal(b.split("train").labels, a.split("train").labels)
    np.testing.assert_array_equal(b.split("train").transforms, a.split("train").transforms)
    ra = json.loads((tmp_path / "one" / "report.json").read_text())
    rb = json.loads((tmp_path / "two" / "report.json").read_text())
    assert rb["count"] == 7 and rb["processes"] == 2 and ra["processes"] == 1
    assert rb["asked_class_shares"] == ra["asked_class_shares"]
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    for sub in ("images", "labels"):
        files = sorted((tmp_path / "two" / sub).iterdir())
        assert [f.name for f in files] == [f"syn_{i:05d}.tif" for i in range(7)]
        with rasterio.open(files[3]) as ds, rasterio.open(tmp_path / "one" / sub / files[3].name) \
                as ref:
            assert ds.crs == ref.crs and ds.transform == ref.transform
            np.testing.assert_array_equal(ds.read(), ref.read())
    with rasterio.open(tmp_path / "two" / "labels.vrt") as vrt, \
            rasterio.open(tmp_path / "one" / "labels.vrt") as ref:
        assert vrt.crs == ref.crs and vrt.transform == ref.transform
        np.testing.assert_array_equal(vrt.read(), ref.read())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_predict_two_processes_with_match_resolution_and_mask(tmp_path):
    import geopandas as gpd
    from rasterio.transform import from_origin
    from shapely.geometry import Polygon

    img, idx = brightness_image(300, 200, seed=4)
    image = write_raster(tmp_path / "img.tif", img,
                         transform=from_origin(500000.0, 2800000.0, 0.35, 0.35))
    model, _ = make_model(tmp_path / "seg", fit_to=(img[:, :64, :64], idx[:64, :64]))
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[Polygon([(500005, 2799990), (500060, 2799975), (500050, 2799900),
                                        (500010, 2799910)])], crs="EPSG:32640").to_file(aoi)
    common = ["predict", str(model), "--image", str(image), "--tile", "64", "--overlap", "16",
              "--match-resolution", "--mask", str(aoi), "--device", "cpu", "--progress", "quiet"]
    one = subprocess.run([sys.executable, "-m", "satsynth", *common, "--out",
                          str(tmp_path / "one.tif")], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(*common, "--out", str(tmp_path / "two.tif"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resampled grid" in two.stderr and "process 1 of 2: rows" in two.stderr
    assert (tmp_path / "one.tif").read_bytes() == (tmp_path / "two.tif").read_bytes()
    with rasterio.open(tmp_path / "two.tif") as ds:
        ids = ds.read(1)
    assert (ids == 255).any() and (ids != 255).any()  # nodata outside the mask, classes inside
