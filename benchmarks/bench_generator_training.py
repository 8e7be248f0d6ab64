"""Does the training pipeline keep up with the model? samples/s of the full training step
(batch drawing from the memory-mapped store + dihedral augmentation + label encoding + noising +
forward + backward + AdamW + EMA + logging) against the bare model step (forward + backward +
AdamW on one fixed batch), measured in the same run, interleaved (bare, pipeline, bare).

    .venv/bin/python benchmarks/bench_generator_training.py [--steps 30] [--batch-size 32]

Target: the pipeline costs at most 10% over the bare step.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_store(path: Path, n: int, size: int, k: int = 6) -> Path:
    """A chip store of smooth random scenes (no real data needed)."""
    from satsynth.data.classes import ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.data.store import ChipStoreWriter, StoreMeta

    rng = np.random.default_rng(0)
    meta = StoreMeta(classes=ClassTable.from_values(range(k)), bands=3, dtype="uint8",
                     chip_size=size, normalizer=Normalizer([0] * 3, [255] * 3, "uint8"),
                     crs="EPSG:32640", pixel_size=(0.5, 0.5))
    with ChipStoreWriter(path, meta, {"train": n}, write_index=False) as w:
        for i in range(n):
            lab = np.repeat(np.repeat(rng.integers(0, k, (4, 4)), size // 4, 0), size // 4, 1)
            img = (lab[None] * 40 + rng.integers(0, 30, (3, size, size))).astype(np.uint8)
            w.add("train", img, lab.astype(np.uint8), (0.5, 0, 0.5 * size * i, 0, -0.5, 0))
    return path


def bare_steps(model, batch, steps: int) -> float:
    """Seconds per bare step: forward + MSE + backward + AdamW on one fixed batch (with class
    shares for a class-share-conditioned model, as the pipeline has)."""
    import torch

    x, t, cond = batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):  # warm-up
        (model(x, t, class_labels=cond).sample - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        (model(x, t, class_labels=cond).sample - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--chips", type=int, default=2000)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from satsynth import progress
    from satsynth.data.store import ChipStore
    from satsynth.generator.config import GeneratorTrainOptions
    from satsynth.generator.model import build_unet
    from satsynth.generator.train import new_config, run_training

    torch.set_num_threads(args.threads)
    progress.set_mode("quiet")
    with tempfile.TemporaryDirectory() as tmp:
        ds = synthetic_store(Path(tmp) / "ds", args.chips, args.chip_size)
        cfg = new_config(ChipStore(ds), GeneratorTrainOptions(preset=args.preset))
        torch.manual_seed(0)
        model = build_unet(cfg).train()
        x = torch.randn(args.batch_size, cfg.channels, args.chip_size, args.chip_size)
        t = torch.randint(0, 1000, (args.batch_size,))
        cond = torch.softmax(torch.randn(args.batch_size, cfg.num_classes), 1) \
            if cfg.condition == "class-shares" else None
        bare1 = bare_steps(model, (x, t, cond), args.steps)
        res = run_training(ds, Path(tmp) / "m", preset=args.preset, steps=args.steps + 3,
                           batch_size=args.batch_size, device="cpu", checkpoint_every=10**6)
        with open(res["log"], encoding="utf-8") as fh:
            el = [float(r["elapsed_s"]) for r in csv.DictReader(fh)]
        pipe = (el[-1] - el[2]) / (len(el) - 3)  # skip 3 warm-up steps
        bare2 = bare_steps(model, (x, t, cond), args.steps)
    bare = (bare1 + bare2) / 2
    print(f"machine: {torch.get_num_threads()} torch thread(s), CPU; preset {args.preset}, "
          f"condition {cfg.condition}, batch {args.batch_size}, {args.chip_size} px chips, "
          f"{args.steps} steps each")
    print(f"bare step      : {args.batch_size / bare:8.1f} samples/s  ({bare * 1000:.0f} ms/step; "
          f"runs {bare1 * 1000:.0f} and {bare2 * 1000:.0f} ms)")
    print(f"pipeline step  : {args.batch_size / pipe:8.1f} samples/s  ({pipe * 1000:.0f} ms/step)")
    print(f"pipeline overhead: {100 * (pipe / bare - 1):+.1f}% (target <= +10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
