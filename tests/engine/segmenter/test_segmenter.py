"""Segmenter stage: training on real + synthetic chips, mixing, metrics, evaluation, experiment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import SIZE, class_table, level_image, make_store

from satsynth.data.store import ChipStore, ChipStoreWriter
from satsynth.errors import SatSynthError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("real") / "ds")


@pytest.fixture(scope="module")
def trained(real, tmp_path_factory):
    from satsynth.segmenter.train import train_segmenter

    out = tmp_path_factory.mktemp("seg") / "model"
    res = train_segmenter(real, out, arch="tiny", encoder="w16d2", epochs=6, batch_size=8,
                          lr=1e-2, device="cpu", augment=False, patience=0)
    return res


# --------------------------------------------------------------------------------------------
# training


def test_tiny_segmenter_learns_brightness_classes_and_saves_everything_needed(trained, real):
    assert trained["miou"] > 0.9
    cfg = json.loads((Path(trained["model"]) / "config.json").read_text())
    assert cfg["kind"] == "segmenter" and cfg["in_channels"] == 1 and cfg["chip_size"] == SIZE
    assert [c["name"] for c in cfg["classes"]["classes"]] == ["water", "road", "building"]
    assert [c["id"] for c in cfg["classes"]["classes"]] == [10, 11, 12]
    assert cfg["normalization"]["low"] == [0.0] and cfg["normalization"]["high"] == [255.0]
    assert cfg["crs"] == "EPSG:32640" and cfg["pixel_size"] == [0.5, 0.5]
    assert cfg["metrics"]["miou"] == pytest.approx(trained["miou"])
    assert cfg["training"]["real_chips"] == 64 and cfg["training"]["synthetic_chips"] == 0
    assert cfg["training"]["validation_chips"] == 16
    metrics = json.loads(open(trained["metrics"]).read())
    assert metrics["miou"] == pytest.approx(trained["miou"])
    assert len(metrics["history"]) == 6
    # weights are safetensors (never pickle) and load back into the same predictions
    from satsynth.segmenter.evaluate import evaluate_dataset

    assert sorted(p.name for p in Path(trained["model"]).iterdir()) == [
        "config.json", "metrics.json", "model.safetensors"]
    rep = evaluate_dataset(trained["model"], trained["model"] + "-eval", real, device="cpu")
    assert rep["miou"] == pytest.approx(trained["miou"], abs=1e-6)


def test_training_stops_at_time_limit_step_budget_and_early_stopping(real, tmp_path):
    from satsynth.segmenter.train import train_segmenter

    res = train_segmenter(real, tmp_path / "m", arch="tiny", encoder="w4d1", epochs=50,
                          batch_size=8, lr=1e-9, device="cpu", patience=2)
    m = json.loads(open(res["metrics"]).read())
    assert m["stopped"].startswith("early stop") and len(m["history"]) < 50
    res = train_segmenter(real, tmp_path / "m2", arch="tiny", encoder="w4d1", epochs=50,
                          batch_size=8, device="cpu", minutes=0.0001, patience=0)
    m = json.loads(open(res["metrics"]).read())
    assert m["stopped"] == "time limit" and len(m["history"]) == 1
    res = train_segmenter(real, tmp_path / "m3", arch="tiny", encoder="w4d1", max_steps=11,
                          batch_size=8, device="cpu", patience=0)
    m = json.loads(open(res["metrics"]).read())
    assert [h["steps"] for h in m["history"]] == [8, 3]  # 64 chips = 8 steps per epoch


# --------------------------------------------------------------------------------------------
# mixing


@pytest.mark.parametrize("ratio,fraction,expected_real,expected_syn",
                         [(0, 1.0, 64, 0), (1, 1.0, 64, 64), (0.5, 1.0, 64, 32),
                          (2.5, 0.25, 16, 40), (3, 1.0, 64, 192)])
def test_mix_draws_r_times_the_real_chips(real, tmp_path_factory, ratio, fraction,
                                          expected_real, expected_syn):
    from satsynth.segmenter.mixing import build_mix, open_synthetic

    syn_path = tmp_path_factory.getbasetemp() / "syn-fill"
    if not syn_path.exists():
        make_store(syn_path, n_train=100, synthetic=True, fill=255)
    real_store = ChipStore(real)
    mix = build_mix(real_store, open_synthetic([syn_path], real_store), ratio, fraction, seed=3)
    assert (mix.n_real, mix.n_synthetic) == (expected_real, expected_syn)
    rows = mix.entries()
    assert len(rows) == expected_real + expected_syn
    # distinct draws while the pool is big enough, repeats only beyond it
    assert len(np.unique(mix.synthetic_indices)) == min(expected_syn, 100)
    images, _labels, is_syn = mix.read(rows[np.random.default_rng(0).permutation(len(rows))])
    from_syn = (images == 255).all(axis=(1, 2, 3))  # synthetic chips are all 255
    np.testing.assert_array_equal(from_syn, is_syn)
    assert int(from_syn.sum()) == expected_syn


def test_validation_never_sees_synthetic_chips(real, tmp_path, monkeypatch):
    import satsynth.segmenter.evaluate as ev
    from satsynth.segmenter.train import train_segmenter

    syn = make_store(tmp_path / "syn", n_train=40, synthetic=True, fill=255)
    seen = []
    original = ev.evaluate_chips

    def spy(model, chips, *a, **k):
        seen.append((str(chips.images.filename), len(chips), k.get("indices")))
        return original(model, chips, *a, **k)

    monkeypatch.setattr(ev, "evaluate_chips", spy)
    res = train_segmenter(real, tmp_path / "m", synthetic=syn, ratio=0.5, arch="tiny",
                          encoder="w4d1", epochs=2, batch_size=8, device="cpu")
    assert len(seen) == 2
    for filename, n, idx in seen:
        assert filename.startswith(str(real)) and filename.endswith("val.images.npy")
        assert n == 16 and idx is None
    cfg = json.loads(open(res["model"] + "/config.json").read())
    assert cfg["training"]["synthetic_chips"] == 32 and cfg["training"]["real_chips"] == 64
    assert cfg["training"]["synthetic"] == [str(syn)]


def test_epoch_batches_drop_single_chip_batches_and_shard_evenly():
    from satsynth.segmenter.mixing import epoch_batches

    b = epoch_batches(17, 8, np.random.default_rng(0))
    assert [len(x) for x in b] == [8, 8]  # the lone 17th chip would break batch norm
    shards = [epoch_batches(50, 8, np.random.default_rng(1), 2, i) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    allidx = np.concatenate([np.concatenate(s) for s in shards])
    assert len(np.unique(allidx)) == len(allidx)


# --------------------------------------------------------------------------------------------
# metrics


def test_metrics_agree_with_a_hand_computed_confusion_matrix():
    from satsynth.segmenter.metrics import SegmentationMetrics

    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 255, 255, 0]])
    preds = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 1, 0, 0]])
    # reference rows, prediction columns; the two 255 pixels do not count
    conf = np.array([[3, 1, 0],
                     [0, 1, 1],
                     [0, 0, 2]])
    m = SegmentationMetrics(4)  # class 3 never appears: it has no IoU and is left out
    m.update(preds[:, :5], target[:, :5])
    m.update(preds[:, 5:], target[:, 5:])
    s = m.compute(["a", "b", "c", "d"])
    np.testing.assert_array_equal(np.asarray(s["confusion"])[:3, :3], conf)
    tp = np.diag(conf)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    iou = tp / (tp + fp + fn)  # 3/4, 1/3, 2/3
    f1 = 2 * tp / (2 * tp + fp + fn)
    np.testing.assert_allclose(s["iou"][:3], iou, rtol=1e-6)
    np.testing.assert_allclose(s["f1"][:3], f1, rtol=1e-6)
    assert s["iou"][3] is None and s["f1"][3] is None
    assert s["miou"] == pytest.approx(iou.mean())
    assert s["overall_accuracy"] == pytest.approx(6 / 8)
    assert s["pixels"] == 8 and s["support"] == [4, 2, 2, 0]


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_synthetic_inputs_give_clear_errors(real, tmp_path):
    from satsynth.segmenter.train import train_segmenter

    kw = {"arch": "tiny", "encoder": "w4d1", "epochs": 1, "device": "cpu"}
    other = make_store(tmp_path / "other", n_train=4, synthetic=True,
                       table=class_table(("water", "road", "tree")))
    with pytest.raises(SatSynthError, match=r"other classes than the real dataset.*12=tree"):
        train_segmenter(real, tmp_path / "m", synthetic=other, ratio=1, **kw)
    fewer = make_store(tmp_path / "fewer", n_train=4, synthetic=True,
                       table=class_table(("water", "road")))
    with pytest.raises(SatSynthError, match="other classes"):
        train_segmenter(real, tmp_path / "m", synthetic=fewer, ratio=1, **kw)
    bands = make_store(tmp_path / "bands", n_train=4, synthetic=True, bands=3)
    with pytest.raises(SatSynthError, match=r"synthetic chips have 3 band\(s\).*has 1"):
        train_segmenter(real, tmp_path / "m", synthetic=bands, ratio=1, **kw)
    small = make_store(tmp_path / "small", n_train=4, synthetic=True, size=16)
    with pytest.raises(SatSynthError, match="16 px, the real chips"):
        train_segmenter(real, tmp_path / "m", synthetic=small, ratio=1, **kw)
    with pytest.raises(SatSynthError, match="synthetic chip folder not found") as e:
        train_segmenter(real, tmp_path / "m", synthetic=tmp_path / "nope", ratio=1, **kw)
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(SatSynthError, match="needs synthetic chips"):
        train_segmenter(real, tmp_path / "m", ratio=2, **kw)
    with pytest.raises(SatSynthError, match="--real-fraction"):
        train_segmenter(real, tmp_path / "m", real_fraction=0, **kw)
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_cli_reports_missing_synthetic_folder_as_one_line(real, tmp_path):
    r = subprocess.run([sys.executable, "-m", "satsynth", "train-segmenter", str(real),
                        "--out", str(tmp_path / "m"), "--synthetic", str(tmp_path / "gone"),
                        "--ratio", "1", "--progress", "json"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["event"] == "error" and "synthetic chip folder not found" in last["message"]
    assert "Traceback" not in r.stderr and not (tmp_path / "m").exists()


def test_evaluate_rejects_dataset_of_other_classes(trained, tmp_path):
    from satsynth.predict.evaluate import evaluate

    other = make_store(tmp_path / "o", n_train=2, n_val=2, table=class_table(("a", "b", "c")))
    with pytest.raises(SatSynthError, match="differ from the model"):
        evaluate(trained["model"], tmp_path / "r", dataset=other, device="cpu")


# --------------------------------------------------------------------------------------------
# evaluation of a raster pair


def _write_pair(tmp_path, h=70, w=90):
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    lab_idx = np.repeat((np.arange(w) * 3 // w)[None].astype(np.uint8), h, 0)  # 3 stripes
    lab_idx[20:40, 10:80] = 1
    img = level_image(lab_idx, rng)
    ids = (lab_idx + 10).astype(np.uint8)
    ids[:5, :7] = 255  # unlabeled corner (nodata)
    prof = {"driver": "GTiff", "height": h, "width": w, "crs": "EPSG:32640",
            "transform": from_origin(500000, 2700000, 0.5, 0.5)}
    with rasterio.open(tmp_path / "img.tif", "w", count=1, dtype="uint8", **prof) as d:
        d.write(img)
    with rasterio.open(tmp_path / "lbl.tif", "w", count=1, dtype="uint8", nodata=255,
                       **prof) as d:
        d.write(ids, 1)
    return tmp_path / "img.tif", tmp_path / "lbl.tif", int((ids != 255).sum())


def test_evaluate_raster_pair_errors(trained, tmp_path):
    import rasterio

    from satsynth.predict.evaluate import evaluate

    img, lbl, _ = _write_pair(tmp_path)
    with rasterio.open(lbl, "r+") as d:
        d.write(np.full((1, 70, 90), 7, np.uint8))
    with pytest.raises(SatSynthError, match=r"lbl.tif: label values not in the class table: 7"):
        evaluate(trained["model"], tmp_path / "rep", image=img, labels=lbl, device="cpu")
    with pytest.raises(SatSynthError, match="--image needs --labels"):
        evaluate(trained["model"], tmp_path / "rep", image=img, device="cpu")


# --------------------------------------------------------------------------------------------
# experiment


def test_experiment_caches_synthesis_and_resumes(real, tmp_path, monkeypatch):
    """The generator here is a test double writing a small synthetic store (no diffusion)."""
    import satsynth.segmenter.train as train_mod
    import satsynth.workflows.experiment as exp_mod
    from satsynth.workflows.experiment import run_experiment

    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "config.json").write_text('{"kind": "generator"}')
    calls = {"synth": [], "train": 0}

    def synthesize(model_dir, count, out, **kw):
        calls["synth"].append(count)
        calls.setdefault("upsampler", []).append(kw.get("upsampler"))
        make_store(out, n_train=count, synthetic=True, seed=kw["seed"])
        return {"synthetic": str(out)}

    monkeypatch.setattr(exp_mod, "synthesize", synthesize)
    original = train_mod.train_segmenter

    def counting(*a, **k):
        calls["train"] += 1
        return original(*a, **k)

    monkeypatch.setattr(train_mod, "train_segmenter", counting)
    # the plugin numbers the runs from the experiment's own progress events: every finished run
    # must reach it, however fast the runs are (JSON lines are otherwise rate-limited)
    from satsynth import progress

    events: list[dict] = []
    monkeypatch.setattr(progress, "emit", events.append)
    monkeypatch.setattr(progress, "_JSON_INTERVAL", 3600.0)
    progress.set_mode("json")
    opts = {"ratios": "0,1", "seeds": 2, "real_fraction": 0.25, "arch": "tiny",
            "encoder": "w4d1", "epochs": 1, "batch_size": 8, "device": "cpu"}
    try:
        out = run_experiment(real, gen, tmp_path / "exp", **opts)
    finally:
        progress.set_mode("quiet")
    assert [e["done"] for e in events if e["stage"] == "experiment"] == [0, 1, 2, 3, 4]
    assert calls == {"synth": [16], "upsampler": [None], "train": 4}
    res = json.loads(open(out["results"]).read())
    assert [r["ratio"] for r in res["summary"]] == [0.0, 1.0]
    assert all(r["runs"] == 2 and r["real_chips"] == 16 for r in res["summary"])
    assert res["summary"][1]["synthetic_chips"] == 16
    assert [r["steps"] for r in res["runs"]] == [2, 2, 2, 2]  # equal compute for every R
    table = open(out["table"]).read()
    assert "mIoU (mean ± SE)" in table and "| 1 | 16 | 16 | 2 |" in table
    assert open(out["plot"], "rb").read(4) == b"\x89PNG"
    assert not (tmp_path / "exp" / "runs").exists() or not any((tmp_path / "exp" / "runs").iterdir())
    # run again with a larger ratio: old runs are kept, only R=2 is trained, 16 more synthesized
    out = run_experiment(real, gen, tmp_path / "exp", **{**opts, "ratios": "0,1,2"})
    assert calls == {"synth": [16, 16], "upsampler": [None, None], "train": 6}
    res = json.loads(open(out["results"]).read())
    assert [r["runs"] for r in res["summary"]] == [2, 2, 2]
    assert res["summary"][2]["synthetic_chips"] == 32
    # the same generator as the base of a super-resolution cascade: the pool is made again
    # through the upsampler and only the R > 0 runs are trained again (R=0 does not use it)
    sr = tmp_path / "sr"
    sr.mkdir()
    (sr / "config.json").write_text('{"kind": "upsampler"}')
    out = run_experiment(real, gen, tmp_path / "exp", upsampler=sr,
                         **{**opts, "ratios": "0,1,2"})
    assert calls == {"synth": [16, 16, 32], "upsampler": [None, None, sr], "train": 10}
    res = json.loads(open(out["results"]).read())
    assert res["settings"]["upsampler"] == str(sr)
    assert f"upsampler={sr}" in open(out["table"]).read()
    assert [r["runs"] for r in res["summary"]] == [2, 2, 2]
    with pytest.raises(SatSynthError, match="--upsampler needs --generator"):
        run_experiment(real, None, tmp_path / "exp", upsampler=sr, **opts)


def test_evaluate_raster_pair_through_the_prediction_stage(trained, tmp_path):
    from satsynth.predict.evaluate import evaluate

    img, lbl, labeled = _write_pair(tmp_path)
    res = evaluate(trained["model"], tmp_path / "rep", image=img, labels=lbl, device="cpu")
    rep = json.loads(open(res["report_json"]).read())
    assert rep["method"] == "whole raster through satsynth.predict"
    assert rep["pixels"] == labeled and res["miou"] > 0.85
    assert open(res["confusion_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(res["report_md"]).read()
    assert "| water |" in md and "mIoU" in md
    assert "confusion.png" in open(res["report_html"]).read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "lbl.tif", "rep"]


def test_cli_exposes_the_documented_flags():
    from satsynth.cli import build_parser

    p = build_parser()
    a = p.parse_args(["train-segmenter", "D", "--out", "S", "--synthetic", "Y", "--ratio", "0.5",
                      "--arch", "segformer", "--encoder", "efficientnet-b0", "--encoder-weights",
                      "w.pth", "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--dice",
                      "--class-weights", "auto", "--patience", "2", "--real-fraction", "0.25",
                      "--minutes", "5", "--seed", "7", "--device", "cpu", "--mixed-precision",
                      "bf16"])
    assert (a.synthetic, a.ratio, a.arch, a.dice, a.class_weights, a.real_fraction) == (
        ["Y"], 0.5, "segformer", True, "auto", 0.25)
    a = p.parse_args(["evaluate", "S", "--image", "i.tif", "--labels", "l.tif", "--out", "R"])
    assert (a.image, a.labels, a.dataset) == ("i.tif", "l.tif", None)
    a = p.parse_args(["experiment", "D", "--generator", "G", "--ratios", "0,1,2,3,5", "--seeds",
                      "3", "--out", "E", "--real-fraction", "0.25", "--count-per-real", "5",
                      "--arch", "unet", "--encoder", "resnet34", "--epochs", "2",
                      "--batch-size", "8", "--device", "cpu"])
    assert (a.ratios, a.seeds, a.count_per_real, a.budget) == ("0,1,2,3,5", 3, 5.0, "steps")
    with pytest.raises(SystemExit):
        p.parse_args(["train-segmenter", "D", "--out", "S", "--arch", "resnet"])


def test_ignore_pixels_of_synthetic_masks_are_left_out_of_loss_and_metrics(real, tmp_path):
    """Synthetic masks mark undecided pixels 255 (generator.encoding): the loss and the metrics
    must not see them, whatever the model predicts there, and training on such pairs works."""
    from satsynth.data.classes import IGNORE_INDEX
    from satsynth.segmenter.metrics import SegmentationMetrics
    from satsynth.segmenter.train import make_loss, train_segmenter

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 8, 8), generator=g)
    y[:, :3] = IGNORE_INDEX
    other = logits.clone()
    other[:, :, :3] = torch.randn(2, 3, 3, 8, generator=g) * 10  # any prediction where ignored
    loss_fn = make_loss(3, dice=True, weights=None, device="cpu")
    assert torch.isfinite(loss_fn(logits, y))
    assert float(loss_fn(other, y)) == pytest.approx(float(loss_fn(logits, y)), rel=1e-6)
    a, b = SegmentationMetrics(3), SegmentationMetrics(3)
    a.update(logits, y)
    b.update(other, y)
    assert a.compute() == b.compute() and a.compute()["pixels"] == 2 * 5 * 8

    src = ChipStore(make_store(tmp_path / "syn0", n_train=32, synthetic=True, seed=3))
    s, syn = src.split("train"), tmp_path / "syn"
    with ChipStoreWriter(syn, src.meta, {"train": len(s)}, write_index=False) as w:
        for i in range(len(s)):
            lab = np.asarray(s.labels[i]).copy()
            lab[::2] = IGNORE_INDEX  # every other row undecided
            w.add("train", s.images[i], lab, s.transforms[i])
    assert (ChipStore(syn).split("train").labels[:, 0] == IGNORE_INDEX).all()
    res = train_segmenter(real, tmp_path / "m", synthetic=syn, ratio=0.5, synthetic_only=True,
                          arch="tiny", encoder="w16d2", epochs=6, batch_size=8, lr=1e-2,
                          device="cpu", augment=False, patience=0)
    hist = json.loads(open(res["metrics"]).read())["history"]
    assert all(np.isfinite(h["loss"]) for h in hist) and res["miou"] > 0.2
