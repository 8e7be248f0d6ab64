"""The bad-input matrix, issue 23 section 2-3: inputs that used to give a wrong result with exit
code 0 (NaN pixels, a diverged training, labels burnt on from 100 km away, two runs writing one
folder through a symbolic link, a forged ONNX cache, one folder merged twice) and the ONNX cache
of a read-only model folder.

Every refusal asserts the matrix's rules (:func:`refused`): exit code 2, one error line naming the
file and the problem, nothing at the final path, no temporary left, every input byte-identical.
The inputs are those of ``test_bad_inputs`` (its module fixture ``w``), plus a float image with a
NaN block.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import test_bad_inputs
from conftest import tmpfs
from rasters import write_raster
from test_bad_inputs import (
    ENV,
    TINY_GEN,
    TINY_SEG,
    digest,
    error_lines,
    leftovers,
    run,
)

w = test_bad_inputs.w  # the matrix's inputs (a module fixture: built once for this module too)


def refused(w: dict[str, Path], argv: list[str], keep: list[Path], says: str, names: str,
            fresh: Path | None = None) -> str:
    """Run ``argv``; assert the matrix's rules for a refusal; returns the error line."""
    before = digest(keep)
    code, err = run(argv)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("satsynth: error: "), err
    assert "Traceback" not in err and says in lines[0] and names in lines[0], lines[0]
    if fresh is not None:
        assert not fresh.exists()
    assert digest(keep) == before
    assert leftovers(w["root"]) == []
    return lines[0]


@pytest.fixture(scope="module")
def nan_ds(w):
    """A float32 image (0-255 values) with a 20 x 20 block of NaN, and its dataset."""
    with rasterio.open(w["img"]) as src:
        img = src.read().astype(np.float32)
    img[:, :20, :20] = np.nan
    image = write_raster(w["root"] / "inputs" / "img_nan.tif", img)
    ds = w["root"] / "ds_nan"
    code, err = run(["prepare", "--image", str(image), "--labels", str(w["lab"]), "--out",
                     str(ds), "--chip-size", "16", "--val-fraction", "0.25", "--block-size", "1"])
    assert code == 0, err
    return image, ds


# --- 2a. non-finite values ---------------------------------------------------------------------

def test_nan_pixels_reach_the_model_as_nodata_not_nan(nan_ds, tmp_path):
    """The root cause: prepare keeps the NaN values (their labels are ignore); the model's input
    must hold none, so training on them stays finite."""
    from satsynth.checkpoint import load_tensors
    from satsynth.data.store import ChipStore
    from satsynth.data.torch_dataset import ChipDataset

    _, ds = nan_ds
    store = ChipStore(ds)
    assert np.isnan(np.asarray(store.split("train").images)).any()  # what prepare stores
    x, _ = ChipDataset(store).get_batch(np.arange(len(store.split("train"))))
    assert bool(x.isfinite().all())
    code, err = run(["train-segmenter", str(ds), "--out", str(tmp_path / "seg"),
                     "--max-steps", "3", *TINY_SEG])
    assert code == 0, err
    load_tensors(tmp_path / "seg")  # refuses non-finite weights


@pytest.mark.parametrize("stage", ["train-segmenter", "train-generator", "train-upsampler"])
def test_non_finite_loss_stops_training_and_saves_nothing(w, nan_ds, tmp_path, stage):
    """A loss that turns NaN (here: a learning rate of 1e30) stops the run at once in one line
    naming the dataset and what to check; no weights are written."""
    _, ds = nan_ds
    out = tmp_path / "model"
    extra = {"train-segmenter": ["--max-steps", "4", *TINY_SEG],
             "train-generator": ["--steps", "4", *TINY_GEN],
             "train-upsampler": ["--steps", "4", "--base-size", "8", *TINY_GEN]}[stage]
    line = refused(w, [stage, str(ds), "--out", str(out), "--lr", "1e30", *extra],
                   [ds, w["root"] / "inputs"], "the loss is nan (not finite)", "ds_nan",
                   fresh=out)
    assert "NaN/inf pixels" in line and "learning rate" in line


def test_non_finite_loss_stops_the_experiment(w, tmp_path):
    """The experiment's training runs stop the same way, and keep no model."""
    out = tmp_path / "exp"
    refused(w, ["experiment", str(w["ds"]), "--ratios", "0", "--seeds", "1", "--out", str(out),
                "--epochs", "1", "--lr", "1e30", *TINY_SEG], [w["ds"]], "not finite", "ds")
    assert not any(out.rglob("*.safetensors"))


def _poison(src: Path, dst: Path, group: str) -> Path:
    """A copy of the model folder ``src`` whose ``group`` weights hold one NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx"))
    state = load_file(str(dst / f"{group}.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(dst / f"{group}.safetensors"))
    return dst


def test_model_with_non_finite_weights_is_never_loaded(w):
    seg = _poison(w["seg"], w["root"] / "seg_nan", "model")
    gen = _poison(w["gen"], w["root"] / "gen_nan", "ema")
    r = w["root"]
    for argv, fresh in (
            (["predict", str(seg), "--image", str(w["img"]), "--out", str(r / "p.tif"),
              "--device", "cpu"], r / "p.tif"),
            (["evaluate", str(seg), "--dataset", str(w["ds"]), "--out", str(r / "ev"),
              "--device", "cpu"], r / "ev"),
            (["export", str(seg), "--out", str(r / "m.onnx"), "--tile", "32"], r / "m.onnx"),
            (["score-pairs", str(w["syn"]), "--segmenter", str(seg), "--device", "cpu"], None),
            (["synthesize", str(gen), "--count", "1", "--steps", "2", "--out", str(r / "s"),
              "--device", "cpu"], r / "s")):
        refused(w, argv, [seg, gen, w["syn"], w["ds"], w["root"] / "inputs"],
                "holds NaN or infinite values", ".safetensors", fresh=fresh)


# --- 2b. --labels-on-image-grid never overrides a georeference ---------------------------------

@pytest.mark.parametrize("stage", ["prepare", "evaluate"])
def test_labels_on_image_grid_refuses_georeferenced_labels_elsewhere(w, stage):
    out = w["root"] / "o"
    argv = ([stage, "--image", str(w["img"]), "--chip-size", "16"] if stage == "prepare" else
            [stage, str(w["seg"]), "--image", str(w["img"]), "--device", "cpu"])
    refused(w, [*argv, "--labels", str(w["lab_far"]), "--labels-on-image-grid", "--out",
                str(out)], [w["root"] / "inputs", w["seg"]],
            "--labels-on-image-grid is for labels without a georeference", "lab_far.tif",
            fresh=out)


# --- 2c. one writer per output, whatever the path's spelling ------------------------------------

def test_lock_keys_follow_identity(tmp_path):
    from satsynth.outputs import lock_keys

    (tmp_path / "a" / "syn").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    same = [tmp_path / "a" / "syn", tmp_path / "link" / "syn", f"{tmp_path}/a/../a/syn/"]
    assert len({tuple(lock_keys(p)) for p in same}) == 1
    new = [tmp_path / "a" / "new", tmp_path / "link" / "new"]
    assert lock_keys(new[0]) == lock_keys(new[1]) and len(lock_keys(new[0])) == 1
    bind = tmp_path / "bind"
    bind.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path / "a"), str(bind)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here: the bind-mount case is not tested")
    try:
        assert lock_keys(bind / "syn") == lock_keys(same[0])
        assert lock_keys(bind / "new") == lock_keys(new[0])
    finally:
        subprocess.run(["umount", str(bind)], check=False)


def test_second_writer_through_a_symlink_is_refused(w, tmp_path):
    """A run holding the synthetic folder (as synthesize --out does) keeps score-pairs and
    another synthesize out, when they name it through a symbolic link."""
    syn = tmp_path / "real" / "syn"
    shutil.copytree(w["syn"], syn)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom satsynth.outputs import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
         str(syn)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        via = tmp_path / "link" / "syn"
        refused(w, ["score-pairs", str(via), "--segmenter", str(w["seg"]), "--device", "cpu"],
                [syn, w["seg"]], "another SatSynth run is writing this output", "syn")
        refused(w, ["synthesize", str(w["gen"]), "--count", "1", "--steps", "2", "--out",
                    str(via), "--device", "cpu"], [syn, w["gen"]],
                "another SatSynth run is writing this output", "syn")
    finally:
        holder.kill()
        holder.wait()
    code, err = run(["score-pairs", str(tmp_path / "link" / "syn"), "--segmenter",
                     str(w["seg"]), "--device", "cpu"])
    assert code == 0, err


# --- 2d. the ONNX cache is checked, not trusted --------------------------------------------------

pytest.importorskip("onnxruntime")


def _predict(w, model: Path, out: Path, runtime: str = "auto", image: str = "img",
             tile: int = 32) -> tuple[int, str]:
    return run(["predict", str(model), "--image", str(w[image]), "--out", str(out), "--device",
                "cpu", "--runtime", runtime, "--tile", str(tile), "--overlap", "8", "-v"])


def test_forged_onnx_cache_is_rebuilt(w, tmp_path):
    """A cache file with the right weights digest but zeroed weights (or another graph) is
    exported again, with an info line; the prediction is the PyTorch one."""
    import torch

    from satsynth.predict.export import write_onnx
    from satsynth.predict.onnx_format import weights_digest
    from satsynth.segmenter.model import load_segmenter

    seg = tmp_path / "seg"
    shutil.copytree(w["seg"], seg, ignore=shutil.ignore_patterns("*.onnx"))
    model, cfg = load_segmenter(seg, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    cache = seg / "model.32x32.onnx"
    write_onnx(model, cfg, cache, 32, 32, overlap=8, digest=weights_digest(seg))
    code, err = _predict(w, seg, tmp_path / "onnx.tif", "onnx")
    assert code == 0, err
    assert "does not give this model's output" in err and "exporting the model" in err
    code, err = _predict(w, seg, tmp_path / "torch.tif", "torch")
    assert code == 0, err
    with rasterio.open(tmp_path / "onnx.tif") as a, rasterio.open(tmp_path / "torch.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    code, err = _predict(w, seg, tmp_path / "again.tif", "onnx")  # the rebuilt cache is reused
    assert code == 0 and "exporting" not in err, err
    cache.unlink()
    cache.mkdir()  # something that is not SatSynth's under the cache's name: left alone
    (cache / "mine.txt").write_text("mine")
    code, err = _predict(w, seg, tmp_path / "beside.tif", "onnx")
    assert code == 0 and "is not a file" in err, err
    assert (cache / "mine.txt").read_text() == "mine" and leftovers(w["root"]) == []


def test_one_export_per_tile_size_and_none_of_old_weights(w, tmp_path):
    """Rasters smaller than a tile, of several shapes, share one export; new weights replace
    it."""
    seg = tmp_path / "seg"
    shutil.copytree(w["seg"], seg, ignore=shutil.ignore_patterns("*.onnx"))
    with rasterio.open(w["img"]) as src:
        img = src.read()
    for name, (h, wd) in (("small_a", (40, 52)), ("small_b", (24, 60)), ("full", (64, 64))):
        w[name] = write_raster(tmp_path / f"{name}.tif", img[:, :h, :wd])
        for runtime in ("onnx", "torch"):
            code, err = _predict(w, seg, tmp_path / f"{name}.{runtime}.tif", runtime, name,
                                 tile=64)
            assert code == 0, err
        with rasterio.open(tmp_path / f"{name}.onnx.tif") as a, \
                rasterio.open(tmp_path / f"{name}.torch.tif") as b:
            assert (a.read(1) == b.read(1)).mean() >= 0.99  # the padding is cut off again
    assert sorted(f.name for f in seg.glob("*.onnx")) == ["model.64x64.onnx"]
    code, err = run(["train-segmenter", str(w["ds"]), "--out", str(seg), "--max-steps", "1",
                     "--seed", "5", *TINY_SEG])  # retrained in place: new weights
    assert code == 0, err
    code, err = _predict(w, seg, tmp_path / "new.tif", "onnx", "small_a", tile=32)
    assert code == 0, err
    assert sorted(f.name for f in seg.glob("*.onnx")) == ["model.32x32.onnx"]


@pytest.fixture()
def read_only_model(w, tmp_path):
    """A copy of the segmenter on a read-only tmpfs mount (skipped where mounting fails)."""
    with tmpfs(tmp_path / "mnt", "16m", "the read-only model folder is not tested") as mnt:
        shutil.copytree(w["seg"], mnt / "seg", ignore=shutil.ignore_patterns("*.onnx"))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "seg"


def test_read_only_model_folder_caches_in_the_user_cache(w, read_only_model, tmp_path,
                                                          monkeypatch):
    before = digest([read_only_model])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, err = _predict(w, read_only_model, tmp_path / "p.tif")
    assert code == 0, err
    assert "the export is cached in" in err
    cached = list((tmp_path / "cache" / "satsynth" / "onnx").rglob("model.32x32.onnx"))
    assert len(cached) == 1
    code, err = _predict(w, read_only_model, tmp_path / "p2.tif")  # reused, not exported again
    assert code == 0 and "exporting" not in err, err
    # no writable cache either: auto runs PyTorch, saying why in one line
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_model))
    code, err = _predict(w, read_only_model, tmp_path / "p3.tif")
    assert code == 0, err
    assert "forward: PyTorch (neither the model folder nor" in err
    assert digest([read_only_model]) == before


# --- 2e. one folder given twice ------------------------------------------------------------------

def test_one_folder_given_twice_is_refused(w, tmp_path):
    (tmp_path / "link").symlink_to(w["syn"])
    r = w["root"]
    keep = [w["syn"], w["ds"], w["root"] / "inputs"]
    refused(w, ["train-segmenter", str(w["ds"]), "--synthetic", str(w["syn"]), "--synthetic",
                str(tmp_path / "link"), "--out", str(r / "o"), *TINY_SEG], keep,
            "given twice to --synthetic", "link", fresh=r / "o")
    refused(w, ["filter-pairs", str(w["syn"]), f"{w['syn']}/../syn", "--keep", "0.5", "--out",
                str(r / "o")], keep, "given twice to filter-pairs", "syn", fresh=r / "o")
    refused(w, ["prepare", "--image", str(w["img"]), "--labels", str(w["lab"]), "--image",
                str(w["img"]), "--labels", str(w["lab"]), "--out", str(r / "o"),
                "--chip-size", "16"], keep, "given twice to --image", "img.tif", fresh=r / "o")



# --- 4. synthesize --score-with checks the segmenter before sampling -----------------------------

def test_score_with_checks_the_segmenter_before_sampling(w, tmp_path, monkeypatch):
    import json

    import satsynth.generator.sample as sample

    def no_sampling(*_a, **_k):
        raise AssertionError("sampled before checking the scoring segmenter")

    monkeypatch.setattr(sample, "generate", no_sampling)  # what every synthesis samples with
    other = tmp_path / "seg_other"
    shutil.copytree(w["seg"], other, ignore=shutil.ignore_patterns("*.onnx"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["classes"]["classes"][0]["name"] = "lava"
    (other / "config.json").write_text(json.dumps(cfg))
    nan = _poison(w["seg"], tmp_path / "seg_nan", "model")
    out = tmp_path / "syn"
    for seg, says in ((other, "differ from those of the segmenter"), (nan, "NaN or infinite")):
        for extra in ([], ["--keep", "0.5"]):
            refused(w, ["synthesize", str(w["gen"]), "--count", "2", "--out", str(out),
                        "--score-with", str(seg), "--device", "cpu", *extra],
                    [w["gen"], seg], says, seg.name if seg == nan else "gen", fresh=out)
