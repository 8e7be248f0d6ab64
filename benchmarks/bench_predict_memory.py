"""Benchmark: ``predict``'s peak memory and CPU time per batch size and ONNX Runtime options.

The figures behind predict's CPU defaults (issue 21): for each model and raster size, each
variant runs ``predict_raster`` end to end in its own child process on ``--threads`` threads,
the variants interleaved over ``--rounds`` rounds, and the table gives the child's peak resident
memory (``VmHWM``) and its CPU seconds (all threads; steadier than wall time on a busy machine)
against ``today`` (batch 8, ONNX Runtime's default session options, the defaults before issue 21).
``defaults`` is whatever the engine does now when no option is given.

    .venv/bin/python benchmarks/bench_predict_memory.py --sizes 4096 \
        --models unet:resnet18 fpn:mobilenet_v2 --runtimes onnx torch
    .venv/bin/python benchmarks/bench_predict_memory.py --sizes 16384 --models unet:resnet18 \
        --runtimes onnx --variants today defaults --rounds 1

Rasters are built from the Dubai aerial tiles (bench_predict.build_raster) in /tmp and deleted at
the end; models have random weights (memory and time do not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import (  # noqa: E402
    CHILD_PEAK,
    DUBAI,
    PREPARE_ONNX,
    _dubai_patches,
    build_raster,
    make_model,
)

#: name -> (batch, ONNX Runtime session options, session config entries); None = the engine's.
VARIANTS: dict[str, tuple[int | None, dict | None, dict | None]] = {
    "today": (8, {"enable_cpu_mem_arena": True, "enable_mem_pattern": True},
              {"session.intra_op.allow_spinning": "1"}),
    "b1": (1, {"enable_cpu_mem_arena": True, "enable_mem_pattern": True}, {}),
    "b1-noarena": (1, {"enable_cpu_mem_arena": False}, {}),
    "b1-noarena-nopattern": (1, {"enable_cpu_mem_arena": False, "enable_mem_pattern": False},
                             {}),
    "b2-noarena": (2, {"enable_cpu_mem_arena": False}, {}),
    "defaults": (None, None, None),
}

CHILD = CHILD_PEAK + """
from satsynth import progress
progress.set_mode('quiet')
import torch, rasterio  # noqa: F401 - library imports are start-up, not per-raster work
from satsynth.predict import onnx_format
from satsynth.predict.predict import predict_raster
from satsynth.segmenter.model import load_segmenter
args = json.loads(sys.argv[1])
load_segmenter(args['model'])
if args['runtime'] == 'onnx':
    import onnxruntime  # noqa: F401
if args['options'] is not None:
    onnx_format.SESSION_OPTIONS = args['options']
    onnx_format.SESSION_CONFIG = args['config']
kw = {} if args['batch'] is None else {'batch': args['batch']}
t, c = time.perf_counter(), cpu()
out = predict_raster(args['model'], args['image'], args['out'], device='cpu',
                     runtime=args['runtime'], **kw)
print(json.dumps({'seconds': time.perf_counter() - t, 'cpu_s': cpu() - c,
                  'vmhwm_mb': vmhwm()}))
"""


def run_child(args: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True,
                       text=True, env=env)
    if p.returncode:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096])
    ap.add_argument("--models", nargs="+", default=["unet:resnet18"], metavar="ARCH:ENCODER")
    ap.add_argument("--runtimes", nargs="+", choices=["onnx", "torch"], default=["onnx"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="satsynth-bench-predmem-", dir="/tmp"))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {a.threads} "
          f"thread(s); {a.rounds} round(s), variants interleaved", flush=True)
    results = []
    try:
        patches = _dubai_patches() if DUBAI.is_dir() else []
        for size in a.sizes:
            image = build_raster(work / f"image_{size}.tif", size, 0.5, patches)
            for spec in a.models:
                arch, encoder = spec.split(":")
                model = work / f"seg_{arch}_{encoder}"
                if not model.exists():
                    make_model(model, arch, encoder)
                    # the export predict caches in the model folder, before any clock starts
                    subprocess.run([sys.executable, "-c", PREPARE_ONNX, json.dumps(
                        {"model": str(model), "tile": 512, "overlap": 64})], check=True)
                for runtime in a.runtimes:
                    names = [v for v in a.variants if runtime == "onnx" or v in ("today",
                                                                                  "defaults")]
                    runs: dict[str, list[dict]] = {v: [] for v in names}
                    for _ in range(a.rounds):
                        for v in names:
                            batch, opts, cfg = VARIANTS[v]
                            runs[v].append(run_child(
                                {"model": str(model), "image": str(image),
                                 "out": str(work / "out.tif"), "runtime": runtime,
                                 "batch": batch, "options": opts, "config": cfg}, a.threads))
                            (work / "out.tif").unlink(missing_ok=True)
                    _print(size, spec, runtime, runs, os.getloadavg()[0])
                    results.append({"size": size, "model": spec, "runtime": runtime,
                                    "runs": runs})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "results": results}, indent=1))


def _print(size: int, spec: str, runtime: str, runs: dict[str, list[dict]], load: float) -> None:
    def mean(v: str, k: str) -> float:
        return sum(r[k] for r in runs[v]) / len(runs[v])

    base = mean("today", "cpu_s") if "today" in runs else None
    print(f"{size}^2 {spec} {runtime} (load now {load:.1f}):")
    for v in runs:
        per_round = ", ".join(f"{r['cpu_s']:.1f}" for r in runs[v])
        rel = f"{mean(v, 'cpu_s') / base - 1:+6.1%}" if base else ""
        print(f"  {v:22s} peak {max(r['vmhwm_mb'] for r in runs[v]):6.0f} MiB  CPU "
              f"{mean(v, 'cpu_s'):7.1f} s {rel}  wall {mean(v, 'seconds'):7.1f} s  "
              f"(CPU s per round: {per_round})",
              flush=True)


if __name__ == "__main__":
    main()
