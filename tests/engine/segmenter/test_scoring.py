"""Pair consistency: scores of synthetic pairs, stored per chip and in the footprints; filtering
to the most consistent pairs; FID/KID only with a real feature extractor."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from builders import SIZE, class_table, make_store
from rasterio.windows import from_bounds

from satsynth.cli import main
from satsynth.data.store import ChipStore, ChipStoreWriter
from satsynth.errors import SatSynthError
from satsynth.segmenter.scoring import (
    SCORED_GRID,
    fid_kid,
    filter_pairs,
    score_pairs,
    select_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A brightness-separable real store, a tiny segmenter trained on it, and a few pairs sampled
    by a (barely trained) generator of the same store: a folder as synthesize writes it."""
    from satsynth.generator.sample import synthesize
    from satsynth.generator.train import run_training
    from satsynth.segmenter.train import train_segmenter

    root = tmp_path_factory.mktemp("scoring")
    real = make_store(root / "real", n_train=32, n_val=8)
    seg = train_segmenter(real, root / "seg", arch="tiny", encoder="w16d2", epochs=4,
                          batch_size=8, lr=1e-2, device="cpu", augment=False, patience=0)
    gen = run_training(real, root / "gen", steps=2, block_widths=[16, 32], batch_size=8,
                       device="cpu", checkpoint_every=10_000)
    syn = synthesize(gen["model"], 8, root / "pool", steps=2, seed=0, device="cpu",
                     batch_size=8)
    return {"root": root, "real": real, "seg": Path(seg["model"]), "seg_miou": seg["miou"],
            "gen": Path(gen["model"]), "pool": Path(syn["synthetic"])}


def _pairs(path: Path, real: Path, shuffled: bool) -> Path:
    """The real training chips as synthetic pairs, with their own masks or with the masks of
    other chips (each mask moved to the next chip)."""
    src = ChipStore(real)
    tr = src.split("train")
    meta = src.meta
    meta.synthetic = True
    n = 12
    with ChipStoreWriter(path, meta, {"train": n}) as w:
        for i in range(n):
            j = (i + 1) % n if shuffled else i
            w.add("train", np.asarray(tr.images[i]), np.asarray(tr.labels[j]),
                  tr.transforms[i], 0)
    return path


def test_a_matching_mask_scores_above_the_same_image_with_a_shuffled_mask(world):
    assert world["seg_miou"] > 0.9
    root = world["root"]
    good = score_pairs(_pairs(root / "good", world["real"], False), world["seg"], device="cpu")
    bad = score_pairs(_pairs(root / "bad", world["real"], True), world["seg"], device="cpu")
    g = ChipStore(good["synthetic"]).split("train").scores
    b = ChipStore(bad["synthetic"]).split("train").scores
    assert g.shape == b.shape == (12, 2)
    assert (g[:, 0] > b[:, 0]).all() and (g[:, 1] > b[:, 1]).all()
    assert g[:, 0].mean() > b[:, 0].mean() + 0.2
    assert good["pair_miou_mean"] > bad["pair_miou_mean"]


def test_scores_are_stored_per_chip_in_the_store_footprints_and_report(world, tmp_path):
    import shutil

    syn = shutil.copytree(world["pool"], tmp_path / "syn")
    before = {p.name for p in tmp_path.iterdir()}
    out = score_pairs(syn, world["seg"], device="cpu")
    assert {p.name for p in tmp_path.iterdir()} == before  # replaced in place, no leftovers
    scores = ChipStore(syn).split("train").scores
    assert scores.shape == (8, 2) and np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    gdf = gpd.read_file(syn / "chips.gpkg").sort_values("chip")
    np.testing.assert_allclose(gdf["miou"], scores[:, 0], atol=1e-4)
    np.testing.assert_allclose(gdf["pixel_accuracy"], scores[:, 1], atol=1e-4)
    assert sorted(gdf["rank"]) == list(range(1, 9))
    assert gdf.loc[gdf["rank"] == 1, "miou"].item() == pytest.approx(scores[:, 0].max(), abs=1e-4)
    assert gdf.crs == ChipStore(world["real"]).meta.crs or gdf.crs.to_epsg() == 32640
    report = json.loads((syn / "report.json").read_text())
    summary = report["pair_consistency"]["summary"]
    assert summary["pairs"] == 8
    assert summary["miou"]["mean"] == pytest.approx(float(scores[:, 0].mean()), abs=1e-4)
    assert report["pair_consistency"]["segmenter"] == str(world["seg"].resolve())
    assert (syn / SCORED_GRID).stat().st_size > 0 and out["grid"] == str(syn / SCORED_GRID)
    # the originals next to it are untouched (the update went through a copy)
    assert ChipStore(world["pool"]).split("train").scores is None


def test_filter_keeps_the_top_fraction_as_a_georeferenced_set_train_segmenter_accepts(
        world, tmp_path):
    import shutil

    from satsynth.segmenter.train import train_segmenter

    pool = shutil.copytree(world["pool"], tmp_path / "pool")
    score_pairs(pool, world["seg"], device="cpu")
    pool_scores = ChipStore(pool).split("train").scores
    res = filter_pairs(pool, tmp_path / "kept", keep=0.5)
    kept = ChipStore(res["synthetic"])
    split = kept.split("train")
    assert kept.meta.synthetic and len(split) == res["kept"] == 4
    top = np.sort(pool_scores[:, 0])[::-1][:4]
    np.testing.assert_allclose(split.scores[:, 0], top, atol=1e-6)  # best first
    real_meta = ChipStore(world["real"]).meta
    gdf = gpd.read_file(kept.path / "chips.gpkg").sort_values("chip")
    assert list(gdf["rank"]) == [1, 2, 3, 4]
    with rasterio.open(kept.path / "images.vrt") as img_vrt, \
            rasterio.open(kept.path / "labels.vrt") as lab_vrt:
        assert img_vrt.crs.to_epsg() == lab_vrt.crs.to_epsg() == 32640
        assert img_vrt.res == (0.5, 0.5) and (img_vrt.width, img_vrt.height) == (2 * SIZE,
                                                                                 2 * SIZE)
        for i, row in enumerate(gdf.itertuples()):
            with rasterio.open(kept.path / "images" / f"syn_{i:05d}.tif") as chip, \
                    rasterio.open(kept.path / "labels" / f"syn_{i:05d}.tif") as lab:
                assert chip.crs.to_epsg() == 32640 and chip.res == real_meta.pixel_size
                assert chip.bounds == pytest.approx(row.geometry.bounds)
                np.testing.assert_array_equal(chip.read(), split.images[i])
                np.testing.assert_array_equal(
                    lab.read(1), real_meta.classes.index_to_id_lut()[split.labels[i]])
                assert chip.tags()["SATSYNTH_RANK"] == str(i + 1)
                win = from_bounds(*chip.bounds, transform=img_vrt.transform)
                np.testing.assert_array_equal(img_vrt.read(window=win), chip.read())
                np.testing.assert_array_equal(lab_vrt.read(1, window=win), lab.read(1))
    report = json.loads((kept.path / "report.json").read_text())
    assert report["count"] == 4 and report["filter"]["pool_pairs"] == 8
    assert report["filter"]["threshold_miou"] == pytest.approx(float(top[-1]), abs=1e-4)
    seg = train_segmenter(world["real"], tmp_path / "seg", synthetic=kept.path, ratio=0.125,
                          arch="tiny", encoder="w8d1", epochs=1, batch_size=8, device="cpu")
    assert json.loads(Path(seg["metrics"]).read_text())["synthetic_chips"] == 4


def test_synthesize_score_with_keep_writes_only_the_kept_pairs(world, tmp_path, capsys):
    out = tmp_path / "syn"
    code = main(["synthesize", str(world["gen"]), "--count", "6", "--steps", "2", "--out",
                 str(out), "--device", "cpu", "--score-with", str(world["seg"]), "--keep",
                 "0.5", "--progress", "quiet"])
    assert code == 0
    store = ChipStore(out)
    assert len(store.split("train")) == 3 and store.split("train").scores.shape == (3, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # the full pool is gone
    capsys.readouterr()
    assert json.loads((out / "report.json").read_text())["filter"]["pool_pairs"] == 6
    assert (out / SCORED_GRID).is_file() and (out / "images.vrt").is_file()
    # without --keep every pair stays, scored
    code = main(["synthesize", str(world["gen"]), "--count", "3", "--steps", "2", "--out",
                 str(tmp_path / "all"), "--device", "cpu", "--score-with", str(world["seg"]),
                 "--progress", "json"])
    assert code == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])["outputs"]
    assert done["grid"].endswith("samples.png") and done["scored_grid"].endswith(SCORED_GRID)
    assert ChipStore(tmp_path / "all").split("train").scores.shape == (3, 2)
    assert sorted(gpd.read_file(tmp_path / "all" / "chips.gpkg")["rank"]) == [1, 2, 3]


def test_filtering_and_scoring_errors_are_one_clear_line(world, tmp_path, capsys):
    with pytest.raises(SatSynthError, match="score-pairs"):
        filter_pairs(world["pool"], tmp_path / "x", keep=0.5)
    with pytest.raises(SatSynthError, match="--keep"):
        select_pairs(np.zeros((4, 2)), keep=1.5)
    with pytest.raises(SatSynthError, match="--keep FRACTION"):
        select_pairs(np.zeros((4, 2)))
    assert main(["synthesize", str(world["gen"]), "--count", "2", "--out", str(tmp_path / "s"),
                 "--keep", "0.5", "--progress", "quiet"]) == 2
    assert "--score-with" in capsys.readouterr().err
    other = make_store(tmp_path / "other", n_train=4, synthetic=True,
                       table=class_table(("a", "b", "c")))
    with pytest.raises(SatSynthError, match="classes"):
        score_pairs(other, world["seg"], device="cpu")
    with pytest.raises(SatSynthError, match="weights file not found"):
        score_pairs(world["pool"], world["seg"], device="cpu",
                    fid_weights=tmp_path / "missing.pth")
    garbage = tmp_path / "inception.pth"
    garbage.write_bytes(b"not weights")
    with pytest.raises(SatSynthError, match="torch-fidelity|cannot build the feature extractor"):
        score_pairs(world["pool"], world["seg"], device="cpu", fid_weights=garbage)
    assert ChipStore(world["pool"]).split("train").scores is None  # nothing half-written
    assert not (tmp_path / "x").exists()


class _BrightnessFeatures(torch.nn.Module):
    """Per-channel mean and standard deviation of uint8 images: a stand-in feature extractor."""

    def forward(self, x):
        x = x.float() / 255.0
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_fid_kid_with_a_custom_feature_extractor_rank_like_data_above_unlike_data(world,
                                                                                    tmp_path):
    real = ChipStore(world["real"])
    like = ChipStore(_pairs(tmp_path / "like", world["real"], True))
    unlike_path = make_store(tmp_path / "unlike", n_train=12, synthetic=True, fill=250)
    unlike = ChipStore(unlike_path)
    near = fid_kid(like, real, feature=_BrightnessFeatures())
    far = fid_kid(unlike, real, feature=_BrightnessFeatures())
    assert 0 <= near["fid"] < far["fid"] and near["kid_mean"] < far["kid_mean"]
    assert "custom feature extractor _BrightnessFeatures" in near["feature_extractor"]
    assert near["real_chips"] == 32 and near["synthetic_chips"] == 12


def test_experiment_filtered_variant_trains_on_the_pairs_its_real_only_run_finds_consistent(
        world, tmp_path):
    from satsynth.workflows.experiment import run_experiment

    out = run_experiment(world["real"], world["gen"], tmp_path / "exp", ratios="0,1", seeds=1,
                         real_fraction=0.25, count_per_real=2, variants="filtered",
                         filter_keep=0.25,
                         arch="tiny", encoder="w8d1", epochs=1, batch_size=4, device="cpu",
                         steps=2)
    res = json.loads(Path(out["results"]).read_text())
    rows = {(r["variant"], r["ratio"]): r for r in res["summary"]}
    assert set(rows) == {("real", 0.0), ("filtered", 1.0)}
    assert rows[("filtered", 1.0)]["synthetic_chips"] == 8 and rows[("filtered", 1.0)][
        "paired_seeds"] == [0]
    folder = tmp_path / "exp" / "synthetic" / "filtered-keep0.25-seed0"
    kept = ChipStore(folder)
    pool = sum(ChipStore(p).count("train") for p in (tmp_path / "exp" / "synthetic").glob(
        "part-*"))
    assert pool == 16 and kept.count("train") == 4
    scores = kept.split("train").scores
    assert (np.diff(scores[:, 0]) <= 1e-6).all()  # most consistent first
    filt = kept.meta.extra["filter"]
    assert filt["kept_pairs"] == 4 and filt["scored_by"] and "seed0" in filt["segmenter"]
    assert [r["train_key"].endswith("-keep0.25") for r in res["runs"]] == [False, True]
    # the baseline model was kept only while needed
    assert not any((tmp_path / "exp" / "runs").glob("real-*"))


def test_scored_synthesis_writes_each_kept_chip_once_as_synthesize_then_filter_pairs_would(
        world, tmp_path, monkeypatch):
    """synthesize --score-with --keep writes the folder once: one GeoTIFF write per kept chip
    and file, none for the pairs left out, no rewrite; and the folder holds what sampling,
    score-pairs and filter-pairs in three steps give (the same pairs, places, scores, tags)."""
    argv = ["synthesize", str(world["gen"]), "--count", "6", "--steps", "2", "--device", "cpu",
            "--progress", "quiet"]
    assert main([*argv, "--out", str(tmp_path / "pool")]) == 0
    score_pairs(tmp_path / "pool", world["seg"], device="cpu")
    filter_pairs(tmp_path / "pool", tmp_path / "steps", keep=0.5)
    opened = []
    real_open = rasterio.open

    def spy(path, mode="r", *args, **kwargs):
        if mode != "r":
            opened.append((Path(path).parent.name, Path(path).name, mode))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    once = tmp_path / "once"
    assert main([*argv, "--out", str(once), "--score-with", str(world["seg"]), "--keep",
                 "0.5"]) == 0
    monkeypatch.undo()
    assert sorted(opened) == sorted((sub, f"syn_{i:05d}.tif", "w") for sub in ("images", "labels")
                                    for i in range(3))
    a, b = ChipStore(once).split("train"), ChipStore(tmp_path / "steps").split("train")
    for part in ("images", "labels", "transforms"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    for sub in ("images", "labels"):
        assert (once / f"{sub}.vrt").read_text() == (tmp_path / "steps" / f"{sub}.vrt").read_text()
        for i in range(3):
            with rasterio.open(once / sub / f"syn_{i:05d}.tif") as x, \
                    rasterio.open(tmp_path / "steps" / sub / f"syn_{i:05d}.tif") as y:
                np.testing.assert_array_equal(x.read(), y.read())
                assert (x.transform, x.crs, x.nodata) == (y.transform, y.crs, y.nodata)
                tx, ty = x.tags(), y.tags()
                # the pair's index in the sampled pool (no pool folder is written to name)
                j = int(ty.pop("SATSYNTH_FILTERED_FROM")[-9:-4])
                assert tx.pop("SATSYNTH_FILTERED_FROM") == f"pair {j} of the 6 sampled"
                assert tx == ty and tx["SATSYNTH_RANK"] == str(i + 1)
    rx, ry = (json.loads((f / "report.json").read_text()) for f in (once, tmp_path / "steps"))
    assert rx.keys() == ry.keys() and rx["filter"].keys() == ry["filter"].keys()
    assert rx["count"] == ry["count"] == 3
    for cx, cy in zip(rx["classes"], ry["classes"], strict=True):
        assert cx["id"] == cy["id"] and cx["synthetic_share"] == cy["synthetic_share"]
        assert cx["real_share"] == pytest.approx(cy["real_share"], abs=2e-6)
    assert rx["pair_consistency"]["summary"] == ry["pair_consistency"]["summary"]
    assert ChipStore(once).meta.extra.keys() == ChipStore(tmp_path / "steps").meta.extra.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once", "pool", "steps"]
