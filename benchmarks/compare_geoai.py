"""Side by side: ``satsynth predict`` and GeoAI's ``semantic_inference_on_geotiff`` on one raster.

Both tools run the same smp Unet / ResNet-18 weights (random, 6 classes) over the same RGB
GeoTIFF (built as in ``bench_predict.py``), each in its own subprocess with the same number of
threads, interleaved: satsynth at its defaults (tile 512, overlap 64, runtime auto = ONNX Runtime
on a CPU), GeoAI at its defaults (window 512, overlap 256, batch 4), then satsynth at GeoAI's
overlap (GeoAI's defaults are its same-overlap run). Prints wall and CPU time, the speed ratios
and each child's peak resident memory (VmHWM).

GeoAI is never installed into the project: pass the Python of an environment that has it
(``geoai-py``, which brings torch and smp), e.g. a throwaway venv:

    python3 -m venv /tmp/geoai-venv && /tmp/geoai-venv/bin/pip install geoai-py
    .venv/bin/python benchmarks/compare_geoai.py --geoai-python /tmp/geoai-venv/bin/python
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
from bench_predict import CHILD_PEAK, DUBAI, _dubai_patches, build_raster, make_model  # noqa: E402

SATSYNTH = CHILD_PEAK + """
import torch, rasterio  # noqa: F401 - library imports are start-up, not per-raster work
from satsynth import progress
progress.set_mode('quiet')
from satsynth.predict.predict import predict_raster
args = json.loads(sys.argv[1])
t, c = time.perf_counter(), cpu()
out = predict_raster(args['model'], args['image'], args['out'], tile=512,
                     overlap=args['overlap'], batch=args['batch'], device='cpu',
                     runtime=args['runtime'])
print(json.dumps({'seconds': time.perf_counter() - t, 'cpu_s': cpu() - c,
                  'vmhwm_mb': vmhwm(), 'runtime': out['runtime']}))
"""

# runs under GeoAI's Python: its own torch/smp build the same network and load the weights
GEOAI = CHILD_PEAK + """
import torch, rasterio  # noqa: F401
import segmentation_models_pytorch as smp
from safetensors.torch import load_file
from geoai.train import semantic_inference_on_geotiff
args = json.loads(sys.argv[1])
model = smp.Unet('resnet18', encoder_weights=None, in_channels=3, classes=6)
model.load_state_dict(load_file(args['model'] + '/model.safetensors'))
kw = {} if args['overlap'] is None else {'overlap': args['overlap']}
t, c = time.perf_counter(), cpu()
semantic_inference_on_geotiff(model, args['image'], args['out'], num_classes=6,
                              device=torch.device('cpu'), quiet=True, **kw)
print(json.dumps({'seconds': time.perf_counter() - t, 'cpu_s': cpu() - c,
                  'vmhwm_mb': vmhwm()}))
"""


def child(python: str, code: str, args: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([python, "-c", code, json.dumps(args)], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        raise SystemExit(f"{python} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--geoai-python", required=True, help="a Python that imports geoai")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="satsynth-vs-geoai-", dir="/tmp"))
    try:
        patches = _dubai_patches() if DUBAI.is_dir() else []
        image = build_raster(work / "image.tif", a.size, 0.5, patches)
        model = work / "unet_resnet18"
        make_model(model, "unet", "resnet18")
        ours = {"model": str(model), "image": str(image), "batch": 4, "runtime": "auto"}
        # export once (predict caches it in the model folder), outside the timed runs
        child(sys.executable, SATSYNTH, {**ours, "overlap": 64, "out": str(work / "w.tif"),
                                         "image": str(build_raster(work / "warm.tif", 512, 0.5,
                                                                   patches))}, a.threads)
        runs = [("satsynth defaults (overlap 64)", sys.executable, SATSYNTH, {**ours, "overlap": 64}),
                ("GeoAI defaults (overlap 256)", a.geoai_python, GEOAI,
                 {"model": str(model), "image": str(image), "overlap": None}),
                ("satsynth overlap 256", sys.executable, SATSYNTH, {**ours, "overlap": 256})]
        res = {}
        for name, py, code, args in runs:
            r = child(py, code, {**args, "out": str(work / "out.tif")}, a.threads)
            res[name] = r
            print(f"{name}: {r['seconds']:.1f} s ({r['cpu_s']:.1f} CPU s), peak RSS "
                  f"{r['vmhwm_mb']:.0f} MB, load {os.getloadavg()[0]:.1f}"
                  + (f" (runtime {r['runtime']})" if "runtime" in r else ""), flush=True)
        pairs = [("defaults", "satsynth defaults (overlap 64)", "GeoAI defaults (overlap 256)"),
                 ("same overlap (256, GeoAI's default)", "satsynth overlap 256",
                  "GeoAI defaults (overlap 256)")]
        for label, s, g in pairs:
            print(f"{label}: satsynth {res[g]['seconds'] / res[s]['seconds']:.2f}x faster "
                  f"(CPU time {res[g]['cpu_s'] / res[s]['cpu_s']:.2f}x); "
                  f"peak RSS satsynth {res[s]['vmhwm_mb']:.0f} MB vs GeoAI "
                  f"{res[g]['vmhwm_mb']:.0f} MB")
        if a.json:
            a.json.write_text(json.dumps({"size": a.size, "threads": a.threads, "runs": res},
                                         indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
