"""Benchmark: training steps per CPU second in float32 and with bf16 autocast (issue 21).

One training step of the generator's UNet (the engine's build_unet: forward + backward + AdamW
on a fixed batch) and of a segmenter (smp FPN/ResNet-18 by default), in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (what ``--mixed-precision auto`` picks on a CPU
with AVX512-BF16 or AMX; the weights stay float32), interleaved in blocks (fp32, bf16, fp32,
bf16, ...) on one thread, timed in CPU seconds of this process: steadier than wall time on a
loaded machine. Prints ms per step, steps per CPU second and the bf16 speed-up.

    .venv/bin/python benchmarks/bench_mixed_precision.py                 # generator, tiny, 64 px
    .venv/bin/python benchmarks/bench_mixed_precision.py --models generator segmenter --rounds 3

Target (issue 21): >= 1.4x generator training steps per CPU second with bf16.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def generator_step(size: int, batch: int, preset: str):
    """A closure running one generator training step (the engine's UNet, class-share cond.)."""
    import tempfile

    import torch
    from bench_generator_training import synthetic_store

    from satsynth.data.store import ChipStore
    from satsynth.generator.config import GeneratorTrainOptions
    from satsynth.generator.model import build_unet
    from satsynth.generator.train import new_config

    with tempfile.TemporaryDirectory() as tmp:
        ds = synthetic_store(Path(tmp) / "ds", 64, size)
        cfg = new_config(ChipStore(ds), GeneratorTrainOptions(preset=preset))
    torch.manual_seed(0)
    model = build_unet(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, cfg.channels, size, size)
    t = torch.randint(0, 1000, (batch,))
    cond = torch.softmax(torch.randn(batch, cfg.num_classes), 1) \
        if cfg.condition == "class-shares" else None

    def step(ctx) -> float:
        with ctx:
            pred = model(x, t, class_labels=cond).sample
        loss = ((pred.float() - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def segmenter_step(size: int, batch: int, arch: str, encoder: str):
    """A closure running one segmenter training step (smp model, cross-entropy, AdamW)."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3,
                             classes=6).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 6, (batch, size, size))

    def step(ctx) -> float:
        with ctx:
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure(step, steps: int, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per step for fp32 and bf16, interleaved blocks of ``steps`` after a warm-up."""
    import torch

    contexts = {"fp32": nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    for make in contexts.values():  # warm-up: oneDNN picks its kernels on the first calls
        step(make())
    per: dict[str, list[float]] = {k: [] for k in contexts}
    for _ in range(rounds):
        for name, make in contexts.items():
            c = time.process_time()
            for _ in range(steps):
                step(make())
            per[name].append((time.process_time() - c) / steps)
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=["generator", "segmenter"],
                    default=["generator"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--segmenter", default="fpn:resnet18", metavar="ARCH:ENCODER")
    ap.add_argument("--steps", type=int, default=5, help="steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="fp32/bf16 block pairs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from satsynth.device import capability, choose_mixed_precision

    torch.set_num_threads(args.threads)
    cap = capability(torch.device("cpu"))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.threads} "
          f"thread(s); {cap.name}: --mixed-precision auto -> "
          f"{choose_mixed_precision('auto', cap)}; {args.size} px, batch {args.batch_size}, "
          f"{args.rounds} x {args.steps} steps per format, interleaved", flush=True)
    for name in args.models:
        if name == "generator":
            step, what = generator_step(args.size, args.batch_size, args.preset), \
                f"generator ({args.preset})"
        else:
            arch, encoder = args.segmenter.split(":")
            step, what = segmenter_step(args.size, args.batch_size, arch, encoder), \
                f"segmenter ({arch}/{encoder})"
        per = measure(step, args.steps, args.rounds)
        mean = {k: sum(v) / len(v) for k, v in per.items()}
        for k, v in per.items():
            print(f"{what:28s} {k}: {mean[k] * 1000:7.0f} ms/step ({1 / mean[k]:.2f} steps per "
                  f"CPU s; blocks {', '.join(f'{s * 1000:.0f}' for s in v)} ms)")
        print(f"{what:28s} bf16 speed-up: {mean['fp32'] / mean['bf16']:.2f}x "
              f"(load now {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
