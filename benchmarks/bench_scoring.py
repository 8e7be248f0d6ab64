"""Cost of scoring synthetic pairs (pair consistency): one forward pass of the scoring segmenter
per pair plus the per-pair mIoU and pixel accuracy (torchmetrics).

Reports CPU seconds of this process (``time.process_time``, one torch thread), which a machine
busy with other jobs changes far less than wall time, and the wall time beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scoring.py [--pairs 256 --size 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch

    from satsynth import progress
    from satsynth.data.classes import ClassInfo, ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.data.store import ChipSplit
    from satsynth.segmenter.model import SegmenterConfig, build_segmenter
    from satsynth.segmenter.scoring import pair_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--arch", default="fpn")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    progress.set_mode("quiet")
    k, n, s = a.classes, a.pairs, a.size
    norm = Normalizer([0.0] * 3, [255.0] * 3, "uint8")
    cfg = SegmenterConfig(arch=a.arch, encoder=a.encoder, in_channels=3, chip_size=s,
                          classes=ClassTable([ClassInfo(i, f"class {i}", (128, 128, 128))
                                              for i in range(k)]), normalization=norm)
    model = build_segmenter(cfg).eval()
    rng = np.random.default_rng(0)
    chips = ChipSplit(rng.integers(0, 255, (n, 3, s, s), dtype=np.uint8),
                      rng.integers(0, k, (n, s, s), dtype=np.uint8), np.zeros((n, 6)),
                      np.zeros(n, np.int32))
    cpu = []
    for rep in range(a.repeats):
        c0, w0 = time.process_time(), time.monotonic()
        pair_scores(model, chips, norm, k, a.batch_size, "cpu")
        cpu.append(time.process_time() - c0)
        print(f"round {rep + 1}: {n} pairs of {s} px scored with {a.arch}/{a.encoder} in "
              f"{cpu[-1]:.1f} CPU s ({time.monotonic() - w0:.1f} s wall)")
    print(f"best: {min(cpu):.1f} CPU s for {n} pairs ({n / min(cpu):.0f} pairs per CPU second)")


if __name__ == "__main__":
    main()
