"""Segmenter training throughput: the full pipeline vs the bare model step, side by side.

Full pipeline = ``train_segmenter`` itself (memory-mapped reads of real + synthetic chips,
normalization, dihedral + photometric augmentation, Accelerate, loss, AdamW + schedule, progress);
its chips/s comes from the training loop's own timing (validation and saving excluded).
Bare model step = the same model, batch size and optimizer on one batch already in memory.
Rounds alternate between the two so a busy machine slows both alike. Target: overhead <= 10 %.

    .venv/bin/python benchmarks/bench_segmenter_training.py [--arch fpn --encoder resnet18]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_stores(root: Path, n: int, size: int, bands: int, k: int) -> tuple[Path, Path]:
    from satsynth.data.classes import ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.data.store import ChipStoreWriter, StoreMeta

    rng = np.random.default_rng(0)
    paths = []
    for name, synthetic in (("real", False), ("syn", True)):
        meta = StoreMeta(classes=ClassTable.from_values(range(k)), bands=bands, dtype="uint8",
                         chip_size=size, normalizer=Normalizer([5.0] * bands, [250.0] * bands),
                         synthetic=synthetic)
        splits = {"train": n} if synthetic else {"train": n, "val": 4}
        with ChipStoreWriter(root / name, meta, splits, write_index=False) as w:
            for split, m in splits.items():
                for _ in range(m):
                    w.add(split, rng.integers(0, 256, (bands, size, size), dtype=np.uint8),
                          rng.integers(0, k, (size, size), dtype=np.uint8), (1, 0, 0, 0, -1, 0))
        paths.append(root / name)
    return paths[0], paths[1]


def bare_steps(arch: str, encoder: str, bands: int, k: int, size: int, batch: int,
               steps: int) -> float:
    """chips/s of forward + backward + AdamW on one in-memory batch."""
    import torch

    from satsynth.data.classes import ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.segmenter.model import SegmenterConfig, build_segmenter

    cfg = SegmenterConfig(arch=arch, encoder=encoder, in_channels=bands,
                          classes=ClassTable.from_values(range(k)),
                          normalization=Normalizer([0.0] * bands, [255.0] * bands), chip_size=size)
    model = build_segmenter(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, bands, size, size) * 2 - 1
    y = torch.randint(0, k, (batch, size, size))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    for _ in range(6):  # warm-up (allocator, caches), like the full run's first epoch
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        float(loss.detach())
    return steps * batch / (time.perf_counter() - t)


def full_pipeline(real: Path, syn: Path, out: Path, arch: str, encoder: str, batch: int,
                  epochs: int) -> float:
    """chips/s of train_segmenter's training loop (last epoch, real + synthetic at R=1)."""
    from satsynth.segmenter.train import train_segmenter

    res = train_segmenter(real, out, synthetic=syn, ratio=1.0, arch=arch, encoder=encoder,
                          epochs=epochs, batch_size=batch, device="cpu", patience=0)
    hist = json.loads(Path(res["metrics"]).read_text())["history"]
    return float(hist[-1]["extra"]["chips_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="fpn")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--chip-size", type=int, default=64)
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chips", type=int, default=128, help="real chips (as many synthetic)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 on a shared machine: OpenMP threads spin-wait)")
    args = ap.parse_args()

    import torch

    from satsynth import progress

    torch.set_num_threads(args.threads)
    progress.set_mode("quiet")
    steps = (2 * args.chips) // args.batch_size
    full, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        real, syn = make_stores(Path(tmp), args.chips, args.chip_size, args.bands, args.classes)
        for r in range(args.rounds):  # ABBA order: neither side always runs first
            order = ("bare", "full") if r % 2 == 0 else ("full", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_steps(args.arch, args.encoder, args.bands, args.classes,
                                           args.chip_size, args.batch_size, steps))
                else:
                    full.append(full_pipeline(real, syn, Path(tmp) / f"m{r}", args.arch,
                                              args.encoder, args.batch_size, epochs=2))
            print(f"round {r + 1}: bare {bare[-1]:.2f} chips/s, full pipeline {full[-1]:.2f} "
                  f"chips/s", flush=True)
    b, f = statistics.median(bare), statistics.median(full)
    overhead = (b - f) / b * 100
    print(f"model {args.arch}/{args.encoder}, {args.chip_size} px, {args.bands} bands, batch "
          f"{args.batch_size}, {steps} steps per measurement, {args.threads} thread(s)")
    print(f"bare model step: {b:.2f} chips/s (median of {args.rounds})")
    print(f"full pipeline:   {f:.2f} chips/s (median of {args.rounds})")
    print(f"overhead: {overhead:.1f} % (target <= 10 %): {'OK' if overhead <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
