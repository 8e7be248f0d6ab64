"""Defaults chosen from the machine: threads from what is free, mixed precision from what the
device computes fast, predict's batch per device; bf16 training on a CPU gives finite losses and
float32 weights."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from satsynth import threads
from satsynth.contract import (
    ENV_LEAVE_CORES,
    PREDICT_BATCH,
    GeneratorTrainFields,
    SegmenterTrainFields,
)
from satsynth.device import (
    Capability,
    capability,
    choose_mixed_precision,
    cpu_flags,
    resolve_device,
)
from satsynth.predict.windows import device_batch

pytestmark = pytest.mark.usefixtures("one_thread")


# --- threads ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("usable", "total", "load", "leave", "expected"), [
    (2, 2, 0.0, 0, 2),    # idle 2-core machine: both cores, as before
    (2, 2, 1.0, 0, 1),    # one busy process elsewhere: the one free core
    (2, 2, 6.0, 0, 1),    # overloaded: never below 1
    (8, 8, 2.6, 0, 5),    # 8 cores, about 3 busy
    (8, 8, 0.0, 1, 7),    # the plugin leaves one core to QGIS
    (1, 1, 0.0, 1, 1),    # ... but always computes on at least one
    (4, 16, 8.0, 0, 2),   # affinity: 4 of 16 CPUs, half the machine busy -> half of ours
])
def test_threads_follow_the_free_cpus(usable, total, load, leave, expected):
    choice = threads.choose_threads(None, usable=usable, total=total, load=load, leave=leave)
    assert choice.threads == expected
    assert f"{usable} usable CPU(s)" in choice.describe()


def test_machine_load_is_what_other_work_uses_now(monkeypatch):
    import psutil

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 50.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 7.0, 7.0), raising=False)
    assert threads.machine_load() == pytest.approx(2.0)  # half of 4 CPUs busy now, whatever
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 1 / 0)  # the load average says
    assert threads.machine_load() == pytest.approx(7.0)  # ... the fallback where psutil fails


def test_threads_option_overrides_and_affinity_is_read(monkeypatch):
    assert threads.choose_threads(3, usable=2, total=2, load=9.0, leave=1).threads == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert threads.usable_cpus() == 3
    monkeypatch.setattr(threads, "machine_load", lambda: 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    monkeypatch.setenv(ENV_LEAVE_CORES, "1")
    assert threads.choose_threads().threads == 2


def test_apply_threads_sets_openmp_and_logs(monkeypatch, caplog):
    for key in (*threads.THREAD_VARS, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="satsynth"):
            choice = threads.apply_threads(1)
            assert "threads:" not in caplog.text  # not before the command's work starts
            resolve_device("cpu")
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1 and choice.reason == "--threads"
        assert "threads: 1 (--threads" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a user's OMP_NUM_THREADS wins over auto
        assert threads.apply_threads(None).reason == "OMP_NUM_THREADS"
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        idle_all = threads.ThreadChoice(2, 2, 0.1, 0, "all usable CPUs")
        threads.set_wait_policy(idle_all)  # every CPU of an idle machine: OpenMP's short spin
        assert "OMP_WAIT_POLICY" not in os.environ
        for shared in (threads.ThreadChoice(1, 2, 1.0, 0, "free"),   # a busy program beside it
                       threads.ThreadChoice(2, 2, 1.2, 0, "--threads"),  # asked for both anyway
                       threads.ThreadChoice(1, 2, 0.0, 1, "free")):  # one core left to QGIS
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
            threads.set_wait_policy(shared)
            assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE", shared
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        threads.set_wait_policy()
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice is kept
    finally:
        torch.set_num_threads(before)


def test_onnx_runtime_threads_wait_as_openmps_do(monkeypatch):
    """ONNX Runtime's pool sleeps while it waits exactly where OpenMP's does (a shared machine),
    and spins where the command has an idle machine's every CPU."""
    import types

    import onnxruntime as ort

    from satsynth.predict.onnx_format import SPINNING, open_session

    fake = types.SimpleNamespace(SessionOptions=ort.SessionOptions,
                                 InferenceSession=lambda path, opts, providers: opts)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert open_session(fake, "m.onnx").get_session_config_entry(SPINNING) == "0"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert open_session(fake, "m.onnx").get_session_config_entry(SPINNING) == "1"


def test_cli_threads_option_reaches_torch(monkeypatch, capsys):
    from satsynth.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["check", "--threads", "1", "--progress", "quiet"]) == 0
        assert "threads: 1" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


# --- mixed precision ----------------------------------------------------------------------------

ZEN4 = Capability("cpu", bf16=True, fp16=False)
OLD_CPU = Capability("cpu", bf16=False, fp16=False)
A100 = Capability("cuda", bf16=True, fp16=True)
T4 = Capability("cuda", bf16=False, fp16=True)
PASCAL = Capability("cuda", bf16=False, fp16=False)
MPS = Capability("mps", bf16=False, fp16=False)


@pytest.mark.parametrize(("cap", "asked", "expected"), [
    (ZEN4, "auto", "bf16"), (OLD_CPU, "auto", "no"), (A100, "auto", "bf16"),
    (T4, "auto", "fp16"), (PASCAL, "auto", "no"), (MPS, "auto", "no"),
    (ZEN4, "no", "no"), (A100, "no", "no"), (T4, "fp16", "fp16"), (A100, "fp16", "fp16"),
    (ZEN4, "fp16", "no"),    # no fast fp16 on a CPU: float32, with a warning
    (ZEN4, "bf16", "bf16"),  # a CPU's bf16 is honoured (train-segmenter no longer refuses it)
    (OLD_CPU, "bf16", "bf16"),  # honoured too, with a warning that it will be slow
])
def test_mixed_precision_per_device_capability(cap, asked, expected):
    assert choose_mixed_precision(asked, cap) == expected


def test_auto_is_the_training_default_and_cpu_flags_decide(tmp_path, monkeypatch):
    assert GeneratorTrainFields().mixed_precision == "auto"
    assert SegmenterTrainFields().mixed_precision == "auto"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert "avx512_bf16" in cpu_flags(str(info))
    assert cpu_flags(str(tmp_path / "missing")) == set()
    monkeypatch.setattr("satsynth.device.cpu_flags", lambda: {"avx2", "fma"})
    assert capability(torch.device("cpu")) == Capability("cpu", False, False, "CPU")
    monkeypatch.setattr("satsynth.device.cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert capability(torch.device("cpu")).bf16


# --- predict's batch ----------------------------------------------------------------------------

def test_predict_batch_defaults_per_device():
    assert device_batch(0, torch.device("cpu")) == PREDICT_BATCH["cpu"] == 1
    assert device_batch(0, torch.device("cuda")) == PREDICT_BATCH["cuda"] == 8
    assert device_batch(4, torch.device("cpu")) == 4


# --- bf16 training on a CPU ---------------------------------------------------------------------

def _tiny_store(path: Path) -> Path:
    from satsynth.data.classes import ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.data.store import ChipStoreWriter, StoreMeta

    meta = StoreMeta(classes=ClassTable.from_values([1, 2]), bands=3, dtype="uint8",
                     chip_size=16, normalizer=Normalizer([0] * 3, [255] * 3, "uint8"),
                     crs="EPSG:32640", pixel_size=(0.5, 0.5), sources=[{"image": "s.tif"}])
    rng = np.random.default_rng(0)
    with ChipStoreWriter(path, meta, {"train": 8, "val": 4}) as w:
        for split, n in (("train", 8), ("val", 4)):
            for i in range(n):
                lab = (rng.random((16, 16)) > 0.5).astype(np.uint8)
                img = (60 + 120 * lab[None] + rng.integers(0, 20, (3, 16, 16))).astype(np.uint8)
                w.add(split, img, lab, (0.5, 0, 300_000.0 + 8 * i, 0, -0.5, 2_800_000.0))
    return path


def _float_dtypes(path: Path) -> set[str]:
    """The dtypes of a weights file's floating-point tensors (BatchNorm's counters are ints)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
    return {str(t.dtype) for t in tensors if t.is_floating_point()}


def test_bf16_training_on_a_cpu_gives_finite_losses_and_float32_weights(tmp_path, caplog):
    from satsynth.generator.train import run_training
    from satsynth.segmenter.train import train_segmenter

    ds = _tiny_store(tmp_path / "ds")
    with caplog.at_level(logging.INFO, logger="satsynth"):
        gen = run_training(ds, tmp_path / "gen", steps=4, block_widths=[8, 16], batch_size=4,
                           warmup=1, device="cpu", mixed_precision="bf16")
        seg = train_segmenter(ds, tmp_path / "seg", arch="tiny", encoder="w8d1", max_steps=4,
                              batch_size=4, device="cpu", mixed_precision="bf16")
    assert "mixed precision: bf16 autocast" in caplog.text
    assert "needs a CUDA GPU" not in caplog.text  # train-segmenter no longer refuses it
    losses = [float(r.split(",")[1]) for r in Path(gen["log"]).read_text().splitlines()[1:]]
    assert len(losses) == 4 and np.isfinite(losses).all()
    metrics = json.loads(Path(seg["metrics"]).read_text())
    assert np.isfinite([h["loss"] for h in metrics["history"]]).all()
    assert _float_dtypes(Path(gen["model"]) / "model.safetensors") == {"torch.float32"}
    assert _float_dtypes(Path(seg["model"]) / "model.safetensors") == {"torch.float32"}
