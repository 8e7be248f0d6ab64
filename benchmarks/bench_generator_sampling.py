"""Sampler speed and fidelity on one model: DDPM-1000 vs DDIM-50 vs DPM-Solver++-20.

Prints pairs/s of the sampling loop (UNet + scheduler + label decoding; writing GeoTIFFs is the
same for every sampler and left out), UNet evaluations per pair and the class-share TV distance of
the samples to the real training labels, for each sampler on the same generator and seeds.

    .venv/bin/python benchmarks/bench_generator_sampling.py --model MODEL_DIR [--count 32]

MODEL_DIR defaults to the fast-b16 (default recipe) model of bench_generator_convergence.py.
Target: DPM-Solver++-20 >= 40x faster than DDPM-1000, TV no worse than DDPM's + 0.02.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm", 20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/satsynth-bench-generator/model-fast-b16")
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samplers", default="ddpm,ddim,dpm")
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        print(f"skipped: no generator at {args.model} (run bench_generator_convergence.py first "
              "or pass --model)")
        return 0
    import numpy as np
    import torch

    from satsynth.generator.model import load_conditions, load_generator
    from satsynth.generator.report import tv_distance
    from satsynth.generator.sample import draw_conditions, generate

    torch.set_num_threads(args.threads)
    model, cfg = load_generator(args.model, "cpu")
    conditions = draw_conditions(load_conditions(args.model), args.count) \
        if cfg.condition == "class-shares" else None
    want = set(args.samplers.split(","))
    rows = []
    for sampler, steps in SAMPLERS:
        if sampler not in want:
            continue
        counts = np.zeros(cfg.num_classes)
        invalid, evals = 0, 0
        t0 = time.perf_counter()
        for first in range(0, args.count, args.batch_size):
            n = min(args.batch_size, args.count - first)
            asked = conditions[first:first + n] if conditions is not None else None
            _, labels, inv, evals = generate(model, cfg, n, first, sampler, steps, seed=0,
                                             conditions=asked)
            counts += np.bincount(labels.ravel(), minlength=cfg.num_classes)[:cfg.num_classes]
            invalid += inv
        total = time.perf_counter() - t0
        rows.append({"sampler": f"{sampler}-{steps}", "evals": evals,
                     "pairs_per_s": args.count / total,
                     "tv": tv_distance(np.asarray(cfg.real_class_shares), counts),
                     "invalid": invalid / counts.sum()})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nmodel {args.model}, {args.count} pairs, batch {args.batch_size}, "
          f"{args.threads} thread(s), CPU")
    print(f"{'sampler':<10} {'UNet evals/pair':>16} {'pairs/s':>9} {'TV':>7} {'invalid':>8}")
    for r in rows:
        print(f"{r['sampler']:<10} {r['evals']:>16} {r['pairs_per_s']:>9.3f} {r['tv']:>7.3f} "
              f"{r['invalid']:>8.4f}")
    by = {r["sampler"].split("-")[0]: r for r in rows}
    if "ddpm" in by and "dpm" in by:
        print(f"DPM-Solver++-20 vs DDPM-1000: {by['dpm']['pairs_per_s'] / by['ddpm']['pairs_per_s']:.1f}x "
              f"faster (target >= 40x); TV {by['dpm']['tv']:.3f} vs {by['ddpm']['tv']:.3f} "
              f"(target <= DDPM + 0.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
