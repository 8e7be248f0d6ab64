"""scripts/gpu_check.py, the GPU path's end-to-end check: its stage chain and output checks run
here at toy scale on the CPU (``--tiny``), and each check fails on a broken output."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(gpu_check, tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check")
    rep = gpu_check.run_all(gpu_check.scale(True, 0), Path("unused"), work, isolate=False)
    return rep, work


def test_the_tiny_chain_runs_every_stage_and_passes_its_checks(tiny_run):
    rep, work = tiny_run
    assert rep.failures == []
    stages = [row[0] for row in rep.rows]
    assert stages == ["prepare", "train-generator (generator)", "train-generator (base)",
                      "train-upsampler (upsampler)", "synthesize (generator)",
                      "synthesize (cascade)", "train-segmenter", "predict (torch, 384^2)",
                      "predict (onnx, 384^2)"]
    rates = dict((row[0], row[2]) for row in rep.rows)
    assert "steps/s" in rates["train-generator (generator)"]
    assert "pairs/s" in rates["synthesize (cascade)"]
    assert "steps/s" in rates["train-segmenter"]
    assert "megapixels/s" in rates["predict (onnx, 384^2)"]
    # the segmenter trained on real + cascade pairs
    training = json.loads((work / "segmenter" / "config.json").read_text())["training"]
    assert training["synthetic"] == [str(work / "synthetic_cascade")]


def test_each_check_fails_on_a_broken_output(gpu_check, tiny_run, tmp_path):
    from satsynth.data.store import ChipStore

    _, work = tiny_run
    ids = {c.id for c in ChipStore(work / "dataset").classes.classes}
    gpu_check.check_synthetic(work / "synthetic_cascade", 4, 32, ids)
    with pytest.raises(gpu_check.CheckFailed, match="3 pairs|4 pairs, asked for 3"):
        gpu_check.check_synthetic(work / "synthetic_cascade", 3, 32, ids)
    with pytest.raises(gpu_check.CheckFailed, match="chips of 32 px, expected 128"):
        gpu_check.check_synthetic(work / "synthetic_cascade", 4, 128, ids)
    with pytest.raises(gpu_check.CheckFailed, match="outside"):
        gpu_check.check_synthetic(work / "synthetic_cascade", 4, 32, {99})
    assert 99 not in ids
    # a generator whose loss went NaN
    import shutil

    broken = tmp_path / "gen"
    shutil.copytree(work / "generator", broken)
    log = broken / "train_log.csv"
    log.write_text(log.read_text().rstrip("\n") + "\n3,nan,1e-05,0.5,6.0\n")
    with pytest.raises(gpu_check.CheckFailed, match="not all finite"):
        gpu_check.check_model(broken, "generator")
    with pytest.raises(gpu_check.CheckFailed, match="not 'segmenter'"):
        gpu_check.check_model(work / "generator", "segmenter")
    pred = gpu_check.check_prediction(work / "pred_torch.tif", 384, ids)
    assert pred.shape == (384, 384) and set(np.unique(pred)) <= ids
    with pytest.raises(gpu_check.CheckFailed, match="not 512 x 512"):
        gpu_check.check_prediction(work / "pred_torch.tif", 512, ids)
    with pytest.raises(gpu_check.CheckFailed, match="are not the class ids"):
        gpu_check.check_prediction(work / "pred_torch.tif", 384, {99})


def test_a_failing_stage_makes_the_check_fail(gpu_check, tmp_path):
    """A stage that exits with an error is reported, and the stages needing it are skipped."""
    sc = gpu_check.scale(True, 0)
    sc.segmenter = [*sc.segmenter, "--encoder", "no-such-encoder"]
    sc.generator = [*sc.generator, "--steps", "1"]
    sc.count = 2
    rep = gpu_check.run_all(sc, Path("unused"), tmp_path, isolate=False)
    assert [f.split(":")[0] for f in rep.failures] == ["train-segmenter"]
    assert "no-such-encoder" in rep.failures[0]
    assert not any(row[0].startswith("predict") for row in rep.rows)


def test_without_a_gpu_it_says_so_and_runs_nothing(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the full check would run")
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out


def test_the_gpu_scale_passes_only_options_the_cli_knows(gpu_check):
    """The GPU chain cannot run here: at least each of its commands parses."""
    from satsynth.cli import build_parser

    sc = gpu_check.scale(False, 2.5)
    assert (sc.device, sc.chip, sc.raster) == ("cuda", 128, 8192)
    assert sc.generator[:2] == ["--recipe", "paper"] and "bf16" in sc.generator
    assert "fp16" in sc.segmenter and sc.segmenter[:2] == ["--arch", "fpn"]
    p = build_parser()
    for argv in (["train-generator", "D", *sc.generator], ["train-generator", "D",
                                                           *sc.base_generator],
                 ["train-upsampler", "D", "--base-size", "32", "--factor", "4", *sc.upsampler],
                 ["synthesize", "G", "--count", "64", *sc.sampling],
                 ["synthesize", "G", "--upsampler", "S", "--count", "64", *sc.sampling],
                 ["train-segmenter", "D", *sc.segmenter],
                 ["predict", "S", "--image", "i.tif", "--runtime", "onnx", "--device", "cuda"]):
        p.parse_args([*argv, "--out", "o", "--progress", "json"])


def test_a_stage_in_its_own_process_reports_its_outputs(gpu_check):
    outputs, seconds, peak = gpu_check.run_stage(["check"], isolate=True)
    assert outputs["satsynth"] and "torch" in outputs and seconds > 0 and peak is None
    with pytest.raises(gpu_check.CheckFailed, match="exited 2: .*not found"):
        gpu_check.run_stage(["info", "/no/such/dataset"], isolate=True)
