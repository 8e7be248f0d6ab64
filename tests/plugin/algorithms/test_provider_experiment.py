"""'Does synthetic data help?' from QGIS (satsynth:run_experiment: the report, progress per run,
cancel and resume with the real engine), and the options a GPU user needs reaching the engine
(the paper's recipe, mixed precision, local encoder weights, the model's default sampler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RecordingFeedback, flag_value, run_alg
from qgis.core import QgsProcessingException

TINY = {"ARCH": "tiny", "ENCODER": "w8d2", "EPOCHS": 1, "BATCH_SIZE": 4, "DEVICE": "cpu",
        "SAMPLER_STEPS": 2}


def test_the_papers_recipe_and_mixed_precision_reach_train_generator(engine_args, dataset,
                                                                      tmp_path):
    run_alg("satsynth:train_generator", {"DATASET": dataset["DATASET"], "RECIPE": "paper",
                                         "PRESET": "tiny", "MIXED_PRECISION": "bf16",
                                         "OUTPUT": str(tmp_path / "g1")})
    run_alg("satsynth:train_generator", {"DATASET": dataset["DATASET"], "PRESET": "small",
                                         "CONDITION": "none", "OUTPUT": str(tmp_path / "g2")})
    paper, default = engine_args
    assert flag_value(paper, "--recipe") == "paper" and flag_value(paper, "--mixed-precision") == "bf16"
    # the recipe chooses the preset and the conditioning: the dialog's are not sent
    assert "--preset" not in paper and "--condition" not in paper
    assert "--recipe" not in default and "--mixed-precision" not in default
    assert (flag_value(default, "--preset"), flag_value(default, "--condition")) == ("small", "none")


def test_encoder_weights_and_mixed_precision_reach_train_segmenter(engine_args, dataset,
                                                                   tmp_path):
    weights = tmp_path / "resnet18 imagenet.safetensors"
    weights.write_bytes(b"not read here")
    run_alg("satsynth:train_segmenter", {"DATASET": dataset["DATASET"], "ENCODER_WEIGHTS":
                                         str(weights), "MIXED_PRECISION": "fp16",
                                         "OUTPUT": str(tmp_path / "s")})
    args = engine_args[0]
    assert flag_value(args, "--encoder-weights") == str(weights)
    assert flag_value(args, "--mixed-precision") == "fp16"
    with pytest.raises(QgsProcessingException, match="no such.safetensors does not exist"):
        run_alg("satsynth:train_segmenter", {"DATASET": dataset["DATASET"], "ENCODER_WEIGHTS":
                                             str(tmp_path / "no such.safetensors"),
                                             "OUTPUT": str(tmp_path / "s2")})


def test_synthesize_leaves_the_sampler_to_the_model_unless_one_is_chosen(engine_args, generator,
                                                                         tmp_path):
    gen = generator[0]["GENERATOR"]
    run_alg("satsynth:synthesize", {"GENERATOR": gen, "COUNT": 2, "OUTPUT": str(tmp_path / "a")})
    run_alg("satsynth:synthesize", {"GENERATOR": gen, "COUNT": 2, "SAMPLER": "ddim",
                                    "OUTPUT": str(tmp_path / "b")})
    assert "--sampler" not in engine_args[0]
    assert flag_value(engine_args[1], "--sampler") == "ddim"


def test_experiment_options_reach_the_engine(engine_args, dataset, generator, tmp_path):
    sr = tmp_path / "sr"
    sr.mkdir()
    (sr / "config.json").write_text('{"kind": "upsampler"}')
    run_alg("satsynth:run_experiment", {
        "DATASET": dataset["DATASET"], "GENERATOR": generator[0]["GENERATOR"],
        "RATIOS": "0, 0.5,2", "SEEDS": 4, "BUDGET": "converge", "REAL_FRACTION": 0.25,
        "VARIANTS": "mix, filtered", "VAL_EVERY": 7, "MINUTES_PER_RUN": 1.5, "SAMPLER": "ddim",
        "UPSAMPLER": str(sr), **TINY,
        "OUTPUT": str(tmp_path / "exp")})
    args = engine_args[0]
    assert args[:2] == ["experiment", dataset["DATASET"]]
    flags = {f: flag_value(args, f) for f in ("--ratios", "--seeds", "--budget", "--real-fraction",
                                         "--variants", "--val-every", "--minutes-per-run",
                                         "--sampler", "--upsampler",
                                         "--arch", "--encoder", "--generator", "--out")}
    assert flags == {"--ratios": "0,0.5,2", "--seeds": "4", "--budget": "converge",
                     "--real-fraction": "0.25", "--variants": "mix,filtered", "--val-every": "7",
                     "--minutes-per-run": "1.5", "--sampler": "ddim", "--upsampler": str(sr),
                     "--arch": "tiny", "--encoder": "w8d2",
                     "--generator": generator[0]["GENERATOR"],
                     "--out": str((tmp_path / "exp").resolve())}
    # a generator folder given as the upsampler is refused before the run
    with pytest.raises(QgsProcessingException, match="not an upsampler"):
        run_alg("satsynth:run_experiment", {
            "DATASET": dataset["DATASET"], "GENERATOR": generator[0]["GENERATOR"],
            "RATIOS": "0,1", "UPSAMPLER": generator[0]["GENERATOR"], **TINY,
            "OUTPUT": str(tmp_path / "exp2")})


def test_experiment_ratios_follow_the_engines_rule(engine_args, dataset, tmp_path):
    """The plugin reads ratios by the contract's rule: sorted, without repeats, and a non-finite
    value is refused before the run (its own copy passed '2,0,1,1' unsorted and 'nan' on)."""
    from satsynth_qgis.algorithms.run_experiment import parse_ratios

    assert parse_ratios("2, 0, 1,1") == [0.0, 1.0, 2.0]
    assert parse_ratios("0,nan") is None and parse_ratios("inf") is None
    assert parse_ratios("0,-1") is None and parse_ratios(" , ") is None
    for bad in ("0,nan", "0,inf"):
        with pytest.raises(QgsProcessingException, match="Ratios must be numbers >= 0"):
            run_alg("satsynth:run_experiment", {"DATASET": dataset["DATASET"], **TINY,
                                                "RATIOS": bad, "OUTPUT": str(tmp_path / "e")})
    assert engine_args == []


@pytest.mark.parametrize("params, message", [
    ({"RATIOS": "0,one"}, "Ratios must be numbers >= 0 separated by commas"),
    ({"RATIOS": "0,1"}, "Ratios above 0 need a generator folder"),
    ({"RATIOS": "0", "UPSAMPLER": "/no/sr"}, "An upsampler folder needs a generator folder"),
    ({"RATIOS": "0", "ARCH": "fpn", "ENCODER": "w8d2"}, "is for the tiny architecture"),
    # the contract's tiny-encoder rule (the plugin's guess took any name starting with "w")
    ({"RATIOS": "0", "ARCH": "tiny", "ENCODER": "wide"}, "takes an encoder like w16d2"),
    ({"RATIOS": "0", "ARCH": "tiny", "ENCODER": "w0d2"}, "takes an encoder like w16d2"),
])
def test_experiment_refuses_bad_parameters_before_starting(engine_args, dataset, tmp_path,
                                                            params, message):
    with pytest.raises(QgsProcessingException, match=message):
        run_alg("satsynth:run_experiment", {"DATASET": dataset["DATASET"], **TINY, **params,
                                            "OUTPUT": str(tmp_path / "exp")})
    assert engine_args == []


@pytest.mark.slow
def test_experiment_reports_each_run_cancels_and_resumes_only_what_is_missing(
        dataset, generator, tmp_path, provider):
    """With the real engine: cancel during the second of four runs, then run again into the same
    folder: the finished run is kept and only the three missing ones are trained; the HTML
    report has the plot and the table."""
    out = tmp_path / "experiment"
    params = {"DATASET": dataset["DATASET"], "GENERATOR": generator[0]["GENERATOR"],
              "RATIOS": "0,1", "SEEDS": 2, "REAL_FRACTION": 0.25, **TINY, "OUTPUT": str(out)}

    class CancelInSecondRun(RecordingFeedback):
        def setProgressText(self, text):
            super().setProgressText(text)
            if text.startswith("run 2 of 4"):
                self.cancel()

    first = CancelInSecondRun()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run_alg("satsynth:run_experiment", params, feedback=first)
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 1 and runs[0]["ratio"] == 0.0
    # after synthesis (its own 0-100 %), the bar counts the runs: the first run's share is
    # 0-25 %, and the text names the run
    runs_from = max(i for i, t in enumerate(first.texts) if t.startswith("synthesize")) + 1
    assert [t for t in first.texts[runs_from:] if t.startswith("run 1 of 4, train-segmenter")]
    assert first.progress_values[-1] == pytest.approx(25, abs=0.01), first.progress_values
    assert not (out / "report.html").exists()

    second = RecordingFeedback()
    results, _ = run_alg("satsynth:run_experiment", params, feedback=second)
    log = second.everything()
    assert "experiment: 4 runs, 1 already done, 3 to do" in log, log[-2000:]
    assert any(t.startswith("run 4 of 4") for t in second.texts)
    runs = json.loads((out / "runs.json").read_text())
    assert sorted((r["ratio"], r["seed"]) for r in runs) == [(0.0, 0), (0.0, 1), (1.0, 0),
                                                             (1.0, 1)]
    report = Path(results["REPORT_HTML"])
    assert report == out / "report.html"
    html = report.read_text(encoding="utf-8")
    assert '<img src="plot.png"' in html and (out / "plot.png").is_file()
    assert "<table>" in html and "paired Δ vs R=0" in html
    summary = json.loads(Path(results["RESULTS"]).read_text())["summary"]
    assert [(r["variant"], r["ratio"], r["runs"]) for r in summary] == [("real", 0.0, 2),
                                                                        ("mix", 1.0, 2)]


def test_the_docks_paper_preset_sends_the_papers_recipe_fpn_and_gpu_options(tmp_path):
    """'Paper-scale on GPU' is what its name says: the paper's recipe on 128 px chips, the FPN
    segmenter, mixed precision; the encoder weights file chosen in the dock reaches the
    segmenter, and the experiment goes into the run's experiment folder (to resume)."""
    from qgis.core import QgsProject

    from satsynth_qgis.dock import params
    from satsynth_qgis.dock.panel import SatSynthDock

    dock = SatSynthDock(None, project=QgsProject.instance(), check_engine=False)
    try:
        dock.output_widget.setFilePath(str(tmp_path / "runs"))
        dock.run_name_edit.setText("paper run")
        dock.preset_combo.setCurrentText("Paper-scale on GPU")
        weights = tmp_path / "resnet50 imagenet.safetensors"
        dock.adv["encoder_weights"].setFilePath(str(weights))
        inputs = dock.inputs()
        assert params.prepare(inputs)["CHIP_SIZE"] == 128
        gen = params.train_generator(inputs)
        assert (gen["RECIPE"], gen["MIXED_PRECISION"]) == ("paper", "bf16")
        seg = params.train_segmenter(inputs)
        assert (seg["ARCH"], seg["ENCODER_WEIGHTS"], seg["MIXED_PRECISION"]) == (
            "fpn", str(weights), "bf16")
        exp = params.experiment(inputs)
        assert (exp["RATIOS"], exp["SEEDS"]) == ("0,1,2,3,5", 3)
        assert exp["OUTPUT"] == str(tmp_path / "runs" / "paper run" / "experiment")
        # the choice is remembered with the other advanced settings
        assert dock.stage_settings().encoder_weights == str(weights)
        dock.preset_combo.setCurrentText("Quick on CPU")
        assert params.train_generator(dock.inputs())["RECIPE"] == "default"
    finally:
        dock.shutdown()
