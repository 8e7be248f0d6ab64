"""Benchmark: ``predict`` and ``synthesize`` in 1 process vs 2 processes (torchrun, gloo, CPU).

Builds a procedural RGB GeoTIFF and a randomly initialised segmenter (``--arch``/``--encoder``,
as in ``bench_predict.py``), and a tiny generator trained for two steps on random chips; then
runs, interleaved in one run (1, 2, 2, 1, 1, 2, ...), the same command as a plain process and
under ``torchrun --standalone --nproc_per_node 2``, every process on one thread
(OMP_NUM_THREADS=1), and prints the wall times (process start included) and their ratio. The
class rasters of both runs are compared byte for byte, and so are the synthetic chip stores.

    .venv/bin/python benchmarks/bench_distributed.py                  # 2048^2, FPN/mobilenet_v2
    .venv/bin/python benchmarks/bench_distributed.py --size 1024 --rounds 1 --count 8

Models have random weights: this measures time, not accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import build_raster, make_model  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

MAKE_GENERATOR = """
import sys
import numpy as np
from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipStoreWriter, StoreMeta
from satsynth.generator.train import run_training
root, size = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
meta = StoreMeta(classes=ClassTable.from_values(range(4)), bands=3, dtype="uint8",
                 chip_size=size, normalizer=Normalizer([0.0] * 3, [255.0] * 3, "uint8"),
                 crs="EPSG:32640", pixel_size=(0.5, 0.5), sources=[{"image": "random"}])
with ChipStoreWriter(root + "/ds", meta, {"train": 16}) as w:
    for i in range(16):
        w.add("train", rng.integers(0, 255, (3, size, size), dtype=np.uint8),
              rng.integers(0, 4, (size, size), dtype=np.uint8),
              (0.5, 0, 300000.0 + i * size * 0.5, 0, -0.5, 2800000.0))
run_training(root + "/ds", root + "/gen", steps=2, batch_size=2, device="cpu",
             block_widths=[32, 64], checkpoint_every=10_000)
"""


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def command(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "satsynth", *args]
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), "-m", "satsynth",
            *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="raster side in pixels")
    ap.add_argument("--arch", default="fpn")
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--count", type=int, default=16, help="pairs to synthesize")
    ap.add_argument("--chip", type=int, default=64, help="generator chip size")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if not TORCHRUN.is_file():
        sys.exit("torchrun not found next to this Python")
    root = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    try:
        image = build_raster(root / "img.tif", a.size, 0.5, [])
        make_model(root / "seg", a.arch, a.encoder)
        subprocess.run([sys.executable, "-c", MAKE_GENERATOR, str(root), str(a.chip)],
                       check=True, env=ENV, capture_output=True)
        times: dict[tuple[str, int], list[float]] = {}
        for r in range(a.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                pred = root / f"pred{n}.tif"
                for p in (pred, pred.with_suffix(".qml"), Path(str(pred) + ".aux.xml")):
                    p.unlink(missing_ok=True)
                shutil.rmtree(root / f"syn{n}", ignore_errors=True)
                times.setdefault(("predict", n), []).append(timed(command(n, [
                    "predict", str(root / "seg"), "--image", str(image), "--out", str(pred),
                    "--device", "cpu", "--progress", "quiet"])))
                times.setdefault(("synthesize", n), []).append(timed(command(n, [
                    "synthesize", str(root / "gen"), "--count", str(a.count), "--steps",
                    str(a.steps), "--sampler", "ddim", "--batch-size", "4", "--out",
                    str(root / f"syn{n}"), "--device", "cpu", "--progress", "quiet"])))
        same_pred = (root / "pred1.tif").read_bytes() == (root / "pred2.tif").read_bytes()
        same_syn = all(np.array_equal(np.load(root / "syn1" / f), np.load(root / "syn2" / f))
                       for f in ("train.images.npy", "train.labels.npy"))
        print(f"machine: {os.cpu_count()} CPUs; every process on 1 thread; "
              f"{a.rounds} interleaved rounds (median shown)")
        print(f"predict: {a.size}x{a.size} px, {a.arch}/{a.encoder}, tile 512, overlap 64; "
              f"synthesize: {a.count} pairs of {a.chip} px, DDIM {a.steps} steps, batch 4")
        for stage in ("predict", "synthesize"):
            t1 = statistics.median(times[(stage, 1)])
            t2 = statistics.median(times[(stage, 2)])
            print(f"{stage:>10}: 1 process {t1:7.1f} s, 2 processes {t2:7.1f} s, "
                  f"speed-up {t1 / t2:.2f}x  (all: 1p {times[(stage, 1)]}, 2p "
                  f"{times[(stage, 2)]})")
        print(f"class raster identical: {same_pred}; synthetic chips identical: {same_syn}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
