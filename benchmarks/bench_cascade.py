"""What does the super-resolution cascade cost against one model at the full size? Seconds per
training step of a base generator at half (or a quarter of) the chip size (``train-generator
--size``), of one generator at the full size, and of the upsampler between the two
(``train-upsampler``), each through the full training pipeline, interleaved in rounds (each
round resumes every run for a few more steps); then pairs/s of sampling at the full size with
the cascade (base + upsampler) against the single model (the sampling loop only, interleaved).

    .venv/bin/python benchmarks/bench_cascade.py --dataset /work/study/dubai64 [--rounds 3]
        [--steps 10] [--batch-size 16] [--count 32] [--base-size 32]

Speed does not depend on the weights: the sampling runs use the briefly trained models.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def step_seconds(log: Path, first_step: int) -> list[float]:
    """Seconds of each step after ``first_step + 1`` (the first step of a round warms up)."""
    with log.open(encoding="utf-8") as fh:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(fh)]
    el = [e for s, e in rows if s > first_step]
    return list(np.diff(el))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="/work/study/dubai64")
    ap.add_argument("--base-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="training steps per run and round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--count", type=int, default=32, help="pairs per sampling run")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from satsynth import progress
    from satsynth.data.store import ChipStore
    from satsynth.generator.model import load_conditions, load_generator
    from satsynth.generator.sample import draw_conditions, generate, upsample_pairs
    from satsynth.generator.train import run_training
    from satsynth.generator.upsampler import load_upsampler, run_upsampler_training

    torch.set_num_threads(args.threads)
    progress.set_mode("quiet")
    full = ChipStore(args.dataset).meta.chip_size
    factor = full // args.base_size
    common = {"preset": args.preset, "batch_size": args.batch_size, "device": "cpu",
              "checkpoint_every": 10**6}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {
            f"base@{args.base_size}": lambda steps, resume: run_training(
                args.dataset, root / "base", size=args.base_size, steps=steps, resume=resume,
                **common),
            f"single@{full}": lambda steps, resume: run_training(
                args.dataset, root / "single", steps=steps, resume=resume, **common),
            f"upsampler {args.base_size}->{full}": lambda steps, resume: run_upsampler_training(
                args.dataset, root / "sr", args.base_size, factor, steps=steps, resume=resume,
                **common),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for name, run in runs.items():
                res = run((r + 1) * args.steps, r > 0)
                times[name] += step_seconds(Path(res["log"]), r * args.steps + 1)
        step_s = {k: float(np.median(v)) for k, v in times.items()}

        base, base_cfg = load_generator(root / "base")
        single, single_cfg = load_generator(root / "single")
        sr, sr_cfg = load_upsampler(root / "sr")

        n = args.count
        cond_base = draw_conditions(load_conditions(root / "base"), n) \
            if base_cfg.condition == "class-shares" else None
        cond_single = draw_conditions(load_conditions(root / "single"), n) \
            if single_cfg.condition == "class-shares" else None
        k = args.sample_steps

        def sample_single() -> None:
            generate(single, single_cfg, n, 0, "dpm", k, 0, "cpu", conditions=cond_single)

        def sample_cascade() -> None:
            imgs, labs, _, _ = generate(base, base_cfg, n, 0, "dpm", k, 0, "cpu",
                                        conditions=cond_base)
            upsample_pairs(sr, sr_cfg, base_cfg, imgs, labs, 0, "dpm", k, 0, "cpu")

        rates: dict[str, list[float]] = {"single": [], "cascade": []}
        for _ in range(2):
            for name, fn in (("single", sample_single), ("cascade", sample_cascade)):
                t0 = time.perf_counter()
                fn()
                rates[name].append(n / (time.perf_counter() - t0))
        params = {name: sum(p.numel() for p in m.parameters())
                  for name, m in (("base", base), ("single", single), ("upsampler", sr))}

    print(f"machine: {args.threads} torch thread(s), CPU; preset {args.preset}, batch "
          f"{args.batch_size}; dataset {args.dataset} ({full} px chips); {args.rounds} rounds "
          f"x {args.steps} steps per run, interleaved; median s/step")
    ref = step_s[f"single@{full}"]
    for name, s in step_s.items():
        print(f"  {name:22s}: {s * 1000:7.0f} ms/step  ({s / ref:.2f}x the single model; "
              f"{len(times[name])} steps)")
    cascade_step = sum(v for k, v in step_s.items() if not k.startswith("single"))
    print(f"  base + upsampler step : {cascade_step * 1000:7.0f} ms  "
          f"({cascade_step / ref:.2f}x one step of the single model)")
    print(f"parameters: base {params['base']:,}, single {params['single']:,}, upsampler "
          f"{params['upsampler']:,}")
    single_rate, cascade_rate = (float(np.mean(rates[k])) for k in ("single", "cascade"))
    print(f"sampling {n} pairs at {full} px, DPM-Solver++ {k} steps (the cascade: {k} base + "
          f"{k} upsampler steps):")
    for name, rate in (("single model", single_rate), ("cascade", cascade_rate)):
        runs_text = ", ".join(f"{v:.2f}" for v in rates[name.split()[0]])
        print(f"  {name:12s}: {rate:6.2f} pairs/s (runs {runs_text}; "
              f"{rate / single_rate:.2f}x the single model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
