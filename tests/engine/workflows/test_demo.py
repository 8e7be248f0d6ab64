"""The demo is the first thing a newcomer runs: it must produce every output it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import rasterio


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "satsynth", "demo", "--progress", "json", "--out", str(out),
           "--scene-size", "256", "--chip-size", "32", "--generator-steps", "3",
           "--segmenter-steps", "3", "--arch", "tiny",
           "--encoder", "w8d2", "--count", "8", "--sampler-steps", "2", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(e["event"] in ("progress", "done") for e in events)
    outputs = events[-1]["outputs"]
    for key in ("dataset", "chips", "generator", "synthetic", "synthetic_grid", "segmenter_real",
                "segmenter_real_synthetic", "segmenter_real_synthetic_filtered",
                "synthetic_filtered", "synthetic_scores", "synthetic_by_score", "prediction",
                "prediction_style", "confidence", "report"):
        assert (out / outputs[key]).exists(), key
    with rasterio.open(outputs["scene_image"]) as src, rasterio.open(outputs["prediction"]) as pred:
        assert pred.crs == src.crs and pred.transform == src.transform
        assert (pred.width, pred.height) == (src.width, src.height)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"real", "real+synthetic", "real+synthetic (filtered)"}
    assert 0.0 <= summary["runs"]["real"]["miou"] <= 1.0
    # the real-only segmenter scored every pair; the filtered run used the better half of them
    assert summary["pair_consistency"]["summary"]["pairs"] == 8
    assert summary["filter"]["kept_pairs"] == 4 and summary["filter"]["pool_pairs"] == 8
    assert summary["runs"]["real+synthetic (filtered)"]["ratio"] == pytest.approx(
        summary["ratio"] / 2, abs=1e-3)
    html = (out / "report.html").read_text()
    assert "real+synthetic (filtered)" in html and "samples.png" in html
    assert "Pair consistency" in html and "pairs_by_score.png" in html
    # the report states the outcome with the measured figures
    real, filt = summary["runs"]["real"]["miou"], summary["runs"]["real+synthetic (filtered)"]
    assert f"Real only: {real:.3f}" in html and f"{filt['miou'] - real:+.3f}" in html


def _summary_without_timings(out) -> dict:
    text = (out / "summary.json").read_text().replace(str(out), "OUT")
    summary = json.loads(text)
    summary.pop("timings_s")
    return summary


@pytest.mark.slow
def test_two_demo_runs_give_identical_summaries(tmp_path):
    """Fixed step counts, not time budgets: the same command gives the same figures however busy
    the machine is (on the same number of threads)."""
    from satsynth.cli import main

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["demo", "--progress", "quiet", "--threads", "1", "--out", str(out),
                     "--scene-size", "256", "--chip-size", "32", "--generator-steps", "4",
                     "--segmenter-steps", "4", "--arch", "tiny", "--encoder", "w8d2",
                     "--count", "8", "--sampler-steps", "2", "--device", "cpu"]) == 0
    a, b = (_summary_without_timings(out) for out in outs)
    assert a["generator_steps"] == 4
    assert a == b
