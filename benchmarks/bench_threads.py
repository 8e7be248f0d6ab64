"""Benchmark: one stage with and without a competing busy process, per thread setting (issue 21).

The stage is a loop of generator training steps (the engine's UNet, tiny preset, 64 px, batch 16,
forward + backward + AdamW; ``--stage segmenter`` runs FPN/ResNet-18 steps instead), each run in
a fresh child process, so that OpenMP reads its environment as ``satsynth`` would start it:

- ``1 thread``: the reference;
- ``N threads, spinning``: all usable CPUs, OpenMP's default wait policy (before issue 21);
- ``N threads, passive``: all usable CPUs, ``OMP_WAIT_POLICY=PASSIVE``;
- ``auto``: what the engine now chooses (``satsynth.threads.choose_threads`` from the affinity
  and the CPUs busy right now; ``OMP_WAIT_POLICY=PASSIVE`` unless it has an idle machine's every
  CPU).

Each setting runs alone and next to one busy process (a Python loop spinning on one core), the
settings interleaved over ``--rounds``. Prints wall seconds and CPU seconds per step; the target:
with one competing busy process no setting the engine picks is slower than 1 thread, and alone
no slower than before.

    .venv/bin/python benchmarks/bench_threads.py [--steps 6 --rounds 2 --stage generator]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {here!r})
args = json.loads(sys.argv[1])
import torch
from bench_mixed_precision import generator_step, segmenter_step
from contextlib import nullcontext
step = (generator_step(64, 16, 'tiny') if args['stage'] == 'generator'
        else segmenter_step(64, 16, 'fpn', 'resnet18'))
step(nullcontext())  # warm-up
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(args['steps']):
    step(nullcontext())
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{'wall': (time.perf_counter() - t) / args['steps'],
                  'cpu': (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / args['steps'],
                  'threads': torch.get_num_threads()}}))
"""

BUSY = "while True: pass"


def settings() -> dict[str, dict[str, str]]:
    """Environment per thread setting (the engine's auto choice made now, from the load)."""
    from satsynth.threads import choose_threads, usable_cpus

    n = usable_cpus()
    choice = choose_threads(None, leave=0)  # what a command starting now would choose
    auto, policy = choice.threads, ({"OMP_WAIT_POLICY": "PASSIVE"} if choice.shares_machine else {})
    return {"1 thread": {"OMP_NUM_THREADS": "1"},
            f"{n} threads, spinning": {"OMP_NUM_THREADS": str(n)},
            f"{n} threads, passive": {"OMP_NUM_THREADS": str(n), "OMP_WAIT_POLICY": "PASSIVE"},
            f"auto ({auto}{', passive' if policy else ', spinning'})":
                {"OMP_NUM_THREADS": str(auto), **policy}}


def run(env_extra: dict[str, str], stage: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra, MKL_NUM_THREADS=env_extra["OMP_NUM_THREADS"])
    p = subprocess.run([sys.executable, "-c", CHILD.format(here=str(HERE)),
                        json.dumps({"stage": stage, "steps": steps})],
                       capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["generator", "segmenter"], default="generator")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; stage {a.stage}, "
          f"{a.steps} steps per run, {a.rounds} round(s), interleaved", flush=True)
    res: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(a.rounds):
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                time.sleep(0.5 if busy else 0)
                for name, env in settings().items():
                    res.setdefault((name, busy), []).append(run(env, a.stage, a.steps))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    for (name, busy), runs in res.items():
        wall = sum(r["wall"] for r in runs) / len(runs)
        cpu = sum(r["cpu"] for r in runs) / len(runs)
        rounds = ", ".join(f"{r['wall'] * 1000:.0f}" for r in runs)
        print(f"  {'busy' if busy else 'alone':5s} {name:22s} wall {wall * 1000:6.0f} ms/step  "
              f"CPU {cpu * 1000:6.0f} ms/step  (wall per round: {rounds})")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
