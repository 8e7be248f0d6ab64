"""'Export segmenter to ONNX' (satsynth:export_segmenter) and Segment raster's runtime choice:
registered, checked, and the right arguments reaching the engine (and, once, the real engine)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import make_tiny_segmenter, run_alg
from qgis.core import QgsApplication, QgsProcessingContext

from satsynth_qgis import runner


@pytest.fixture
def fake_segmenter(tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"kind": "segmenter", "in_channels": 3}))
    return folder


@pytest.fixture
def engine_args(monkeypatch, provider):
    """Every engine command the algorithms start, answered at once."""
    seen: list[list[str]] = []

    def fake_run_engine(args, feedback=None, **_options):
        seen.append([str(a) for a in args])
        return runner.RunResult({"model": args[args.index("--out") + 1]
                                 if "--out" in args else ""}, list(args), 0.1)

    monkeypatch.setattr(runner, "run_engine", fake_run_engine)
    return seen


def test_export_algorithm_is_registered_and_passes_its_arguments(engine_args, fake_segmenter,
                                                                 tmp_path):
    alg = QgsApplication.processingRegistry().algorithmById("satsynth:export_segmenter")
    assert alg is not None and alg.groupId() == "prediction"
    out = tmp_path / "model.onnx"
    results, _ = run_alg("satsynth:export_segmenter", {
        "MODEL": str(fake_segmenter), "TILE": 256, "OVERLAP": 32, "OUTPUT": str(out)})
    args = [a for a in engine_args if a[0] == "export"][0]
    assert args == ["export", str(fake_segmenter), "--format", "onnx", "--out", str(out),
                    "--tile", "256", "--overlap", "32"]
    assert results["OUTPUT"] == str(out)


def test_export_algorithm_checks(fake_segmenter, tmp_path, provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById("satsynth:export_segmenter")
    ctx = QgsProcessingContext()
    base = {"MODEL": str(fake_segmenter), "OUTPUT": str(tmp_path / "m.onnx")}
    ok, msg = alg.checkParameterValues({**base, "TILE": 64, "OVERLAP": 40}, ctx)
    assert not ok and "at most half the tile" in msg
    ok, msg = alg.checkParameterValues({**base, "OUTPUT": str(tmp_path / "m.pt")}, ctx)
    assert not ok and ".onnx" in msg
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "config.json").write_text(json.dumps({"kind": "generator"}))
    ok, msg = alg.checkParameterValues({**base, "MODEL": str(gen)}, ctx)
    assert not ok and "not a segmenter folder" in msg


@pytest.mark.parametrize("runtime, expected", [("onnx", "onnx"), ("torch", "torch"),
                                               ("auto", None)])
def test_segment_raster_passes_the_runtime(engine_args, fake_segmenter, scene, tmp_path,
                                           runtime, expected):
    run_alg("satsynth:segment_raster", {"MODEL": str(fake_segmenter), "INPUT": scene["image"],
                                        "RUNTIME": runtime, "OUTPUT": str(tmp_path / "p.tif")})
    args = [a for a in engine_args if a[0] == "predict"][0]
    got = args[args.index("--runtime") + 1] if "--runtime" in args else None
    assert got == expected


def test_export_with_the_real_engine_writes_a_deepness_ready_model(engine_python, provider,
                                                                  tmp_path):
    seg = tmp_path / "seg"
    make_tiny_segmenter(engine_python, seg, [{"id": 1, "name": "water"}, {"id": 2, "name": "forest"}],
                        pixel_size=2.0)
    out = tmp_path / "exported model.onnx"
    results, _ = run_alg("satsynth:export_segmenter", {"MODEL": str(seg), "TILE": 64,
                                                       "OVERLAP": 16, "OUTPUT": str(out)})
    assert Path(results["OUTPUT"]) == out and out.is_file()
    meta = subprocess.run([engine_python, "-c",
                           "import json, sys; from satsynth.predict.onnx_format import read_metadata;"
                           "print(json.dumps(read_metadata(sys.argv[1])))", str(out)],
                          check=True, capture_output=True, text=True, timeout=300).stdout
    meta = json.loads(meta)
    assert meta["model_type"] == "Segmentor" and meta["class_names"] == {"0": "water",
                                                                        "1": "forest"}
    assert meta["resolution"] == 200.0 and meta["tile_size"] == 64
