"""ONNX export and the ONNX Runtime forward of ``predict`` (tiny models: seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from builders import ENV, T_UTM, TABLE, brightness_image, make_model
from rasters import write_raster

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from satsynth.errors import SatSynthError  # noqa: E402
from satsynth.predict.export import export_segmenter  # noqa: E402
from satsynth.predict.onnx_format import DIGEST_KEY, read_metadata  # noqa: E402
from satsynth.predict.onnx_runtime import cache_path  # noqa: E402
from satsynth.predict.predict import predict_raster  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A fitted tiny model and a georeferenced 200 x 260 raster it was fitted on."""
    d = tmp_path_factory.mktemp("onnx")
    img, idx = brightness_image(200, 260, seed=3)
    image = write_raster(d / "scene.tif", img, transform=T_UTM)
    model_dir, _ = make_model(d / "seg", fit_to=(img, idx))
    return model_dir, image


def test_export_round_trip_matches_torch_and_carries_deepness_metadata(tmp_path, scene):
    import onnxruntime as ort
    import torch

    from satsynth.segmenter.model import load_segmenter

    model_dir, _ = scene
    out = tmp_path / "model.onnx"
    res = export_segmenter(model_dir, out, tile=64, overlap=16)
    assert out.is_file() and res["max_difference"] <= 1e-3
    assert not list(tmp_path.glob(".*partial*")), "temporary export left behind"

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.shape[1:] == [3, 64, 64] and isinstance(inp.shape[0], str)  # dynamic batch
    model, cfg = load_segmenter(model_dir)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 3, 64, 64)).astype(np.float32)
    got = sess.run(None, {inp.name: x})[0]
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
        want = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # logits agree too: log-probabilities differ from logits by one constant per pixel
    d = np.log(np.maximum(got, 1e-30)) - logits.numpy()
    np.testing.assert_allclose(d - d.mean(axis=1, keepdims=True), 0, atol=1e-3)

    # every value is JSON (Deepness json.loads each one) with the types Deepness converts to
    raw = sess.get_modelmeta().custom_metadata_map
    meta = {k: json.loads(v) for k, v in raw.items()}
    assert meta == read_metadata(out)
    assert meta["model_type"] == "Segmentor"
    names = meta["class_names"]
    assert isinstance(names, dict)
    assert [names[k] for k in sorted(names, key=int)] == [c.name for c in TABLE.classes]
    assert sorted(int(k) for k in names) == list(range(len(TABLE)))  # channels, consecutive
    assert isinstance(meta["resolution"], float) and meta["resolution"] == pytest.approx(50.0)
    for key in ("tile_size", "tiles_size"):
        assert isinstance(meta[key], int) and meta[key] == 64
    assert isinstance(meta["tiles_overlap"], int) and meta["tiles_overlap"] == 25
    assert meta["seg_thresh"] == 0.0
    # Deepness: x / 255, then (x - mean) / std must be our normalization (low 0, high 255)
    v = np.array([0.0, 51.0, 255.0])
    mean, std = np.array(meta["standardization_mean"]), np.array(meta["standardization_std"])
    assert mean.shape == std.shape == (3,)
    ours = cfg.normalization.to_model(np.stack([v] * 3)[:, None, :])  # (C, 1, 3)
    for band in range(3):
        np.testing.assert_allclose((v / 255 - mean[band]) / std[band], ours[band, 0], atol=1e-5)
    # the project's own
    assert meta["satsynth_classes"] == TABLE.to_dict()
    assert meta["satsynth_normalization"] == cfg.normalization.to_dict()
    assert meta["satsynth_bands"] == 3 and meta["satsynth_crs"] == "EPSG:32640"
    assert meta["satsynth_pixel_size"] == [0.5, 0.5] and meta["satsynth_tile"] == [64, 64]
    assert len(meta[DIGEST_KEY]) == 64


def test_export_refuses_bad_requests_in_one_line(tmp_path, scene):
    model_dir, image = scene
    with pytest.raises(SatSynthError, match=r"\.onnx name"):
        export_segmenter(model_dir, tmp_path / "model.pt")
    with pytest.raises(SatSynthError, match="--format"):
        export_segmenter(model_dir, tmp_path / "m.onnx", fmt="tflite")
    with pytest.raises(SatSynthError, match="--overlap"):
        export_segmenter(model_dir, tmp_path / "m.onnx", tile=64, overlap=40)
    res = subprocess.run([sys.executable, "-m", "satsynth", "export", str(tmp_path / "none"),
                          "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True,
                         env=ENV)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "model folder not found" in res.stderr


def test_predict_onnx_equals_torch_and_reuses_its_export(tmp_path, scene, caplog):
    model_dir, image = scene
    outs = {}
    for runtime in ("torch", "onnx"):
        pred, conf = tmp_path / f"{runtime}.tif", tmp_path / f"{runtime}_conf.tif"
        r = predict_raster(model_dir, image, pred, confidence=conf, tile=96, overlap=16,
                           batch=3, device="cpu", runtime=runtime)
        assert r["runtime"] == runtime
        with rasterio.open(pred) as a, rasterio.open(conf) as c:
            outs[runtime] = (a.read(1), c.read(1).astype(int), a.crs, a.transform)
    (ids_t, conf_t, crs_t, tr_t), (ids_o, conf_o, crs_o, tr_o) = outs["torch"], outs["onnx"]
    assert crs_o == crs_t and tr_o == tr_t
    np.testing.assert_array_equal(ids_o, ids_t)
    assert np.abs(conf_o - conf_t).max() <= 1
    cached = cache_path(model_dir, 96, 96)
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    caplog.set_level("INFO", logger="satsynth")
    caplog.clear()  # only the second prediction's records (earlier ones depend on test order)
    predict_raster(model_dir, image, tmp_path / "again.tif", tile=96, overlap=16, batch=3,
                   device="cpu", runtime="onnx")
    assert cached.stat().st_mtime_ns == stamp, "the cached export was not reused"
    assert "exporting" not in caplog.text


def test_changed_weights_get_a_fresh_export(tmp_path):
    img, idx = brightness_image(64, 64, seed=1)
    image = write_raster(tmp_path / "img.tif", img, transform=T_UTM)
    model_dir, _ = make_model(tmp_path / "seg", seed=0)
    predict_raster(model_dir, image, tmp_path / "a.tif", tile=32, overlap=8, device="cpu",
                   runtime="onnx")
    first = read_metadata(cache_path(model_dir, 32, 32))[DIGEST_KEY]
    make_model(tmp_path / "seg", seed=1)  # retrained into the same folder
    predict_raster(model_dir, image, tmp_path / "b.tif", tile=32, overlap=8, device="cpu",
                   runtime="onnx")
    second = read_metadata(cache_path(model_dir, 32, 32))[DIGEST_KEY]
    assert first != second
    predict_raster(model_dir, image, tmp_path / "c.tif", tile=32, overlap=8, device="cpu",
                   runtime="torch")
    with rasterio.open(tmp_path / "b.tif") as b, rasterio.open(tmp_path / "c.tif") as c:
        np.testing.assert_array_equal(b.read(1), c.read(1))  # the new weights' classes


def test_missing_onnxruntime_errors_for_onnx_and_falls_back_for_auto(tmp_path, scene,
                                                                       monkeypatch):
    model_dir, image = scene
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(SatSynthError) as err:
        predict_raster(model_dir, image, tmp_path / "x.tif", tile=64, overlap=16, device="cpu",
                       runtime="onnx")
    msg = str(err.value)
    assert "\n" not in msg and "onnxruntime" in msg and "pip install onnxruntime" in msg
    assert not (tmp_path / "x.tif").exists()
    r = predict_raster(model_dir, image, tmp_path / "auto.tif", tile=64, overlap=16,
                       device="cpu", runtime="auto")
    assert r["runtime"] == "torch" and (tmp_path / "auto.tif").is_file()


def test_cli_runtime_onnx_with_json_progress(tmp_path, scene):
    model_dir, image = scene
    res = subprocess.run([sys.executable, "-m", "satsynth", "predict", str(model_dir),
                          "--image", str(image), "--out", str(tmp_path / "p.tif"),
                          "--tile", "64", "--overlap", "16", "--runtime", "onnx",
                          "--progress", "json"], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]  # stdout: JSON lines only
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["runtime"] == "onnx"
