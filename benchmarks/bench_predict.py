"""Benchmark: streamed prediction over large rasters (memory, overhead, throughput).

Builds 4096^2 and 16384^2 RGB GeoTIFFs in /tmp by tiling real aerial imagery from
``<repo>/../shared/datasets/dubai-aerial`` (a procedural image where it is absent), then, each in
its own subprocess:

1. ``predict_raster`` end to end, with its peak resident memory (``ru_maxrss`` of the child and
   its own ``VmHWM``; this parent stays small so both agree);
2. the bare model forward over the same number of tiles (same batch size, no reading, blending
   or writing), run before and after the end-to-end run; overhead = end-to-end / bare - 1;
3. throughput in megapixels/s and km^2/min at the raster's ground resolution (the Dubai tiles
   carry no georeference: they are placed at a nominal ``--gsd`` metres in UTM 40N).

Targets (issue 5): the 16384^2 run peaks at <= 1.5 GB and <= 1.25x the 4096^2 run; reading,
blending and writing add <= 15% to the bare forward.

The runtime is a dimension (``--runtimes torch onnx``, issue 15): per raster, end to end with
each runtime and the bare forward of each (PyTorch eager; ONNX Runtime on the export ``predict``
caches in the model folder, made before the clock starts), interleaved in one run (bare torch,
bare onnx, end-to-end torch, end-to-end onnx, bare onnx, bare torch), each child on ``--threads``
threads. It prints the speed-up of onnx over torch end to end and bare, the onnx pipeline's
overhead over the bare onnx forward, and the share of pixels with the same class in both
predictions. Targets: onnx end to end >= 2.5x faster for smp models, onnx overhead <= 10%,
>= 99.99% identical pixels, 16384^2 peak <= 1.25x the 4096^2 run. It also counts the forward's
floating-point operations (torch's ``FlopCounterMode``) and measures the machine's
single-precision matrix product on the same threads: how close each bare forward's GFLOP/s
come to dense arithmetic at its best on this machine, which limits what any runtime can gain.

    .venv/bin/python benchmarks/bench_predict.py                      # tiny CPU model, both sizes
    .venv/bin/python benchmarks/bench_predict.py --real fpn:mobilenet_v2 --real-size 2048
    .venv/bin/python benchmarks/bench_predict.py --runtimes torch onnx --sizes 4096 \
        --real fpn:mobilenet_v2 unet:resnet18 --real-size 4096

Large files go to /tmp and are deleted at the end. Models have random weights: this measures
speed and memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO / ".." / "shared" / "datasets" / "dubai-aerial"

CHILD_PEAK = """
import json, resource, sys, time
def vmhwm():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
def cpu():  # CPU seconds of this process, all threads: steadier than wall time on a busy machine
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
"""

E2E = CHILD_PEAK + """
from satsynth import progress
progress.set_mode('quiet')
# library imports are process start-up, not per-raster work: done before the clock starts.
# Loading the model once imports exactly what predict imports for it (smp only for smp models),
# so the peak memory is that of 'satsynth predict' on this model, no more.
import torch, rasterio  # noqa: F401
from satsynth.predict.predict import predict_raster
from satsynth.segmenter.model import load_segmenter
args = json.loads(sys.argv[1])
load_segmenter(args['model'])  # imports what this model needs; the copy is dropped
if args['runtime'] == 'onnx':
    import onnxruntime  # noqa: F401 - a library import, as torch above
t, c = time.perf_counter(), cpu()
out = predict_raster(args['model'], args['image'], args['out'], tile=args['tile'],
                     overlap=args['overlap'], batch=args['batch'], device='cpu',
                     runtime=args['runtime'])
assert out['runtime'] == args['runtime'], out
dt = time.perf_counter() - t
print(json.dumps({'seconds': dt, 'cpu_s': cpu() - c, 'vmhwm_mb': vmhwm(),
                  'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BARE = CHILD_PEAK + """
import torch
from satsynth.segmenter.model import load_segmenter
args = json.loads(sys.argv[1])
model, cfg = load_segmenter(args['model'])
torch.manual_seed(0)
x = torch.randn(args['batch'], cfg.in_channels, args['tile'], args['tile'])
n = args['tiles']
if args['runtime'] == 'onnx':  # the session predict opens on the export it caches
    from satsynth.predict.onnx_runtime import OnnxForward
    forward = OnnxForward(args['model'], model, cfg, torch.device('cpu'), 0)
    model = lambda xb: forward(xb.numpy())  # noqa: E731
with torch.inference_mode():
    t, c = time.perf_counter(), cpu()  # no warm-up: the end-to-end run pays its first call too
    done = 0
    while done < n:
        b = min(args['batch'], n - done)
        model(x[:b])
        done += b
dt = time.perf_counter() - t
print(json.dumps({'seconds': dt, 'cpu_s': cpu() - c, 'vmhwm_mb': vmhwm()}))
"""


def _dubai_patches(size: int = 512, limit: int = 48) -> list[np.ndarray]:
    """RGB patches (3, size, size) cut from the Dubai aerial images (plain JPEGs, no CRS)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    warnings.simplefilter("ignore", NotGeoreferencedWarning)

    patches = []
    for jpg in sorted(DUBAI.glob("Tile */images/*.jpg")):
        with rasterio.open(jpg) as ds:
            img = ds.read()
        for r in range(0, img.shape[1] - size + 1, size):
            for c in range(0, img.shape[2] - size + 1, size):
                patches.append(img[:, r:r + size, c:c + size])
                if len(patches) >= limit:
                    return patches
    return patches


def _procedural_patch(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    f = np.sin(xx / rng.uniform(20, 90)) * np.cos(yy / rng.uniform(20, 90))
    base = (127 + 90 * f)[None] + rng.normal(0, 10, (3, size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def build_raster(path: Path, size: int, gsd: float, patches: list[np.ndarray],
                 seed: int = 0) -> Path:
    """A size x size RGB JPEG-compressed tiled GeoTIFF, written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    p = 512
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(
            path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
            crs="EPSG:32640", transform=from_origin(300000.0, 2800000.0, gsd, gsd), tiled=True,
            blockxsize=512, blockysize=512, compress="jpeg", photometric="ycbcr",
            jpeg_quality=90, bigtiff="if_safer") as ds:
        for r in range(0, size, p):
            strip = np.empty((3, p, size), dtype=np.uint8)
            for c in range(0, size, p):
                patch = patches[rng.integers(len(patches))] if patches else _procedural_patch(rng)
                k = int(rng.integers(4))
                strip[:, :, c:c + p] = np.rot90(patch, k, axes=(1, 2))
            ds.write(strip, window=Window(0, r, size, p))
    return path


#: The Dubai aerial dataset's classes (ids 0-5), the table every benchmark model is built with.
DUBAI_CLASSES = ["Unlabeled", "Building", "Land", "Road", "Vegetation", "Water"]


def make_model(path: Path, arch: str, encoder: str) -> None:
    """Save a randomly initialised segmenter with the Dubai class table (6 classes)."""
    code = f"""
import json, torch
from pathlib import Path
from satsynth.checkpoint import save_model_dir
from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.segmenter.model import SegmenterConfig, build_segmenter
torch.manual_seed(0)
classes = ClassTable.from_dict([{{"id": i, "name": n}} for i, n in enumerate({DUBAI_CLASSES!r})])
cfg = SegmenterConfig(arch={arch!r}, encoder={encoder!r}, in_channels=3, classes=classes,
                      normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"),
                      crs="EPSG:32640", pixel_size=[0.5, 0.5])
m = build_segmenter(cfg).eval()
save_model_dir({str(path)!r}, "segmenter", cfg.to_dict(), {{"model": m.state_dict()}})
"""
    subprocess.run([sys.executable, "-c", code], check=True)


PREPARE_ONNX = """
import json, sys
import numpy as np, torch
from satsynth.predict.onnx_runtime import OnnxForward
from satsynth.segmenter.model import load_segmenter
args = json.loads(sys.argv[1])
model, cfg = load_segmenter(args['model'])
OnnxForward(args['model'], model, cfg, torch.device('cpu'), args['overlap'])(
    np.zeros((1, cfg.in_channels, args['tile'], args['tile']), np.float32))
print(json.dumps({}))
"""

FLOPS = CHILD_PEAK + """
import torch
from torch.utils.flop_counter import FlopCounterMode
from satsynth.segmenter.model import load_segmenter
args = json.loads(sys.argv[1])
model, cfg = load_segmenter(args['model'])
x = torch.zeros(args['batch'], cfg.in_channels, args['tile'], args['tile'])
with FlopCounterMode(display=False) as counter, torch.inference_mode():
    model(x)
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
from satsynth.predict.onnx_format import open_session
a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
graph = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['c'])], 'mm',
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2048, 2048])
                           for n in 'ab'],
                          [helper.make_tensor_value_info('c', TensorProto.FLOAT, [2048, 2048])])
path = args['work'] + '/matmul.onnx'
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), path)
sess = open_session(ort, path)
ta = torch.from_numpy(a)
best = {}
products = (('torch', lambda: ta @ ta), ('onnx', lambda: sess.run(None, {'a': a, 'b': a})))
for name, product in products:  # the best of ten, in CPU seconds (as the bare runs)
    best[name] = float('inf')
    for _ in range(10):
        c = cpu()
        product()
        best[name] = min(best[name], cpu() - c)
print(json.dumps({'flops_per_tile': counter.get_total_flops() / args['batch'],
                  'sgemm_gflops': {k: 2 * 2048 ** 3 / v / 1e9 for k, v in best.items()}}))
"""

THREADS = 1
BARE_RUNS = 2


def run_child(code: str, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def tiles_for(size: int, tile: int, overlap: int, multiple: int) -> int:
    from satsynth.raster import TileGrid

    return len(TileGrid.for_region(size, size, tile, overlap, multiple))


def agreement(a: Path, b: Path) -> float:
    """Share of pixels with the same class in two predictions (read by block rows)."""
    import rasterio

    same = total = 0
    with rasterio.open(a) as da, rasterio.open(b) as db:
        for _, win in da.block_windows(1):
            x, y = da.read(1, window=win), db.read(1, window=win)
            same += int((x == y).sum())
            total += x.size
    return same / total


def bench_runtimes(model: Path, image: Path, size: int, gsd: float, tile: int, overlap: int,
                   batch: int, multiple: int, work: Path) -> dict:
    """Both runtimes on one raster, interleaved: bare torch, bare onnx, end-to-end torch and
    onnx, bare onnx, bare torch."""
    n = tiles_for(size, tile, overlap, multiple)
    common = {"model": str(model), "tile": tile, "overlap": overlap, "batch": batch}
    run_child(PREPARE_ONNX, common)  # the export predict caches; not timed
    flops = run_child(FLOPS, {**common, "work": str(work)})
    order = [("bare", "torch"), ("bare", "onnx"), ("e2e", "torch"), ("e2e", "onnx"),
             ("bare", "onnx"), ("bare", "torch")][:6 if BARE_RUNS == 2 else 4]
    got: dict = {}
    for kind, rt in order:
        if kind == "bare":
            r = run_child(BARE, {**common, "tiles": n, "runtime": rt})
        else:
            r = run_child(E2E, {**common, "runtime": rt, "image": str(image),
                                "out": str(work / f"pred_{size}_{rt}.tif")})
        got.setdefault((kind, rt), []).append(r)
    bare = {rt: float(np.mean([r["seconds"] for r in got[("bare", rt)]]))
            for rt in ("torch", "onnx")}
    bare_cpu = {rt: float(np.mean([r["cpu_s"] for r in got[("bare", rt)]]))
                for rt in ("torch", "onnx")}
    e2e = {rt: got[("e2e", rt)][0] for rt in ("torch", "onnx")}
    agree = agreement(work / f"pred_{size}_torch.tif", work / f"pred_{size}_onnx.tif")
    res = {"size": size, "tiles": n, "threads": THREADS,
           "e2e_s": {rt: e2e[rt]["seconds"] for rt in e2e},
           "bare_s": bare,
           "bare_runs_s": {rt: [r["seconds"] for r in got[("bare", rt)]] for rt in bare},
           "speedup_e2e": e2e["torch"]["seconds"] / e2e["onnx"]["seconds"],
           "speedup_bare": bare["torch"] / bare["onnx"],
           "e2e_cpu_s": {rt: e2e[rt]["cpu_s"] for rt in e2e}, "bare_cpu_s": bare_cpu,
           "cpu_speedup_e2e": e2e["torch"]["cpu_s"] / e2e["onnx"]["cpu_s"],
           "cpu_speedup_bare": bare_cpu["torch"] / bare_cpu["onnx"],
           "cpu_overhead": {rt: e2e[rt]["cpu_s"] / bare_cpu[rt] - 1.0 for rt in bare},
           "load": os.getloadavg()[0],
           "overhead": {rt: e2e[rt]["seconds"] / bare[rt] - 1.0 for rt in bare},
           "agreement": agree,
           "flops_per_tile": flops["flops_per_tile"], "sgemm_gflops": flops["sgemm_gflops"],
           "bare_gflops": {rt: flops["flops_per_tile"] * n / bare_cpu[rt] / 1e9 for rt in bare},
           "peak_vmhwm_mb": {rt: e2e[rt]["vmhwm_mb"] for rt in e2e},
           "bare_peak_mb": {rt: got[("bare", rt)][0]["vmhwm_mb"] for rt in bare}}
    print(f"  {size}^2: {n} tiles, {THREADS} thread(s); end to end torch "
          f"{res['e2e_s']['torch']:.1f} s, onnx {res['e2e_s']['onnx']:.1f} s "
          f"(onnx {res['speedup_e2e']:.2f}x faster); bare forward torch {bare['torch']:.1f} s "
          f"(runs {' / '.join(f'{v:.1f}' for v in res['bare_runs_s']['torch'])}), onnx "
          f"{bare['onnx']:.1f} s (runs {' / '.join(f'{v:.1f}' for v in res['bare_runs_s']['onnx'])}"
          f"; {res['speedup_bare']:.2f}x); pipeline overhead torch "
          f"{100 * res['overhead']['torch']:+.1f}%, onnx {100 * res['overhead']['onnx']:+.1f}%; "
          f"identical pixels {100 * agree:.4f}%; peak RSS torch "
          f"{res['peak_vmhwm_mb']['torch']:.0f} MB, onnx {res['peak_vmhwm_mb']['onnx']:.0f} MB "
          f"(bare forward alone {res['bare_peak_mb']['torch']:.0f} / "
          f"{res['bare_peak_mb']['onnx']:.0f} MB)", flush=True)
    print(f"  CPU seconds (all threads of the child): end to end torch "
          f"{res['e2e_cpu_s']['torch']:.1f}, onnx {res['e2e_cpu_s']['onnx']:.1f} "
          f"({res['cpu_speedup_e2e']:.2f}x); bare torch {bare_cpu['torch']:.1f}, onnx "
          f"{bare_cpu['onnx']:.1f} ({res['cpu_speedup_bare']:.2f}x); pipeline CPU overhead "
          f"torch {100 * res['cpu_overhead']['torch']:+.1f}%, onnx "
          f"{100 * res['cpu_overhead']['onnx']:+.1f}%; load average {res['load']:.1f}",
          flush=True)
    g = res["bare_gflops"]
    peak = max(flops["sgemm_gflops"].values())
    res["speedup_at_matmul_rate"] = peak / g["torch"]
    print(f"  the forward's arithmetic: {flops['flops_per_tile'] / 1e9:.1f} GFLOP per tile; bare "
          f"forward torch {g['torch']:.0f} GFLOP/s, onnx {g['onnx']:.0f} GFLOP/s per CPU second "
          f"({100 * g['onnx'] / peak:.0f}% of the best matrix product); a 2048^2 single-precision "
          f"matrix product on {THREADS} thread(s) runs at {flops['sgemm_gflops']['torch']:.0f} "
          f"GFLOP per CPU second in torch, {flops['sgemm_gflops']['onnx']:.0f} in ONNX Runtime: a "
          f"forward that ran all its arithmetic at the better rate would be "
          f"{res['speedup_at_matmul_rate']:.2f}x faster than torch's", flush=True)
    for rt in ("torch", "onnx"):
        (work / f"pred_{size}_{rt}.tif").unlink(missing_ok=True)
    return res


def bench_size(model: Path, image: Path, size: int, gsd: float, tile: int, overlap: int,
               batch: int, multiple: int, work: Path) -> dict:
    n = tiles_for(size, tile, overlap, multiple)
    common = {"model": str(model), "tile": tile, "overlap": overlap, "batch": batch,
              "runtime": "torch"}
    bare1 = run_child(BARE, {**common, "tiles": n})
    e2e = run_child(E2E, {**common, "image": str(image), "out": str(work / f"pred_{size}.tif")})
    bare2 = run_child(BARE, {**common, "tiles": n})
    bare = (bare1["seconds"] + bare2["seconds"]) / 2
    px = size * size
    res = {"size": size, "tiles": n, "e2e_s": e2e["seconds"], "bare_s": bare,
           "bare_runs_s": [bare1["seconds"], bare2["seconds"]],
           "overhead": e2e["seconds"] / bare - 1.0, "mp_per_s": px / e2e["seconds"] / 1e6,
           "km2_per_min": px * gsd * gsd / 1e6 / (e2e["seconds"] / 60),
           "peak_vmhwm_mb": e2e["vmhwm_mb"], "peak_ru_maxrss_mb": e2e["ru_maxrss_mb"],
           "bare_peak_mb": bare1["vmhwm_mb"]}
    print(f"  {size}^2: {n} tiles, end-to-end {e2e['seconds']:.1f} s, bare forward "
          f"{bare:.1f} s (runs {bare1['seconds']:.1f} / {bare2['seconds']:.1f}), overhead "
          f"{100 * res['overhead']:+.1f}%, {res['mp_per_s']:.2f} MP/s, "
          f"{res['km2_per_min']:.3f} km2/min at {gsd} m, peak RSS {e2e['vmhwm_mb']:.0f} MB "
          f"(ru_maxrss {e2e['ru_maxrss_mb']:.0f} MB; bare forward alone "
          f"{bare1['vmhwm_mb']:.0f} MB)", flush=True)
    (work / f"pred_{size}.tif").unlink(missing_ok=True)
    return res


def summarize_runtimes(results: dict, by_size: dict) -> None:
    """The issue-15 targets, per run, and the memory ratio per runtime."""
    for r in results["runs"]:
        smp = not r["model"].startswith("tiny")
        sp = r["speedup_e2e"]
        print(f"{r['model']} {r['size']}^2: onnx end to end {sp:.2f}x faster than torch "
              f"(CPU time {r['cpu_speedup_e2e']:.2f}x)"
              + (f" (target >= 2.5x: {'met' if sp >= 2.5 else 'MISSED'})" if smp else "")
              + f"; onnx overhead {100 * r['overhead']['onnx']:+.1f}% (target <= 10%: "
              f"{'met' if r['overhead']['onnx'] <= 0.10 else 'MISSED'}; CPU time "
              f"{100 * r['cpu_overhead']['onnx']:+.1f}%); identical pixels "
              f"{100 * r['agreement']:.4f}% (target >= 99.99%: "
              f"{'met' if r['agreement'] >= 0.9999 else 'MISSED'})")
    if 4096 in by_size and 16384 in by_size:
        ratios = {rt: by_size[16384]["peak_vmhwm_mb"][rt] / by_size[4096]["peak_vmhwm_mb"][rt]
                  for rt in ("torch", "onnx")}
        results["memory_ratio"] = ratios
        for rt, ratio in ratios.items():
            print(f"memory {rt}: 16384^2 peak {by_size[16384]['peak_vmhwm_mb'][rt]:.0f} MiB, "
                  f"{ratio:.3f}x the 4096^2 run (target <= 1.25: "
                  f"{'met' if ratio <= 1.25 else 'MISSED'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--model", default="tiny:w16d2", help="arch:encoder for the size runs")
    ap.add_argument("--real", nargs="+", default=[], metavar="ARCH:ENCODER",
                    help="also measure the overhead with these smp models on --real-size")
    ap.add_argument("--real-size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gsd", type=float, default=0.5, help="nominal metres per pixel")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--runtimes", nargs="+", choices=["torch", "onnx"], default=["torch"],
                    help="torch (default: the PyTorch-only benchmark) or torch onnx (both, "
                         "interleaved, compared)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per child (default: all; 1 with --runtimes torch onnx)")
    ap.add_argument("--bare-runs", type=int, choices=[1, 2], default=2,
                    help="bare forwards per runtime with --runtimes torch onnx: 2 (before and "
                         "after the end-to-end runs, averaged) or 1 (before only)")
    a = ap.parse_args()
    global THREADS, BARE_RUNS
    BARE_RUNS = a.bare_runs
    both = len(set(a.runtimes)) == 2
    THREADS = a.threads or (1 if both else os.cpu_count() or 1)
    if not both and a.runtimes != ["torch"]:
        ap.error("--runtimes: torch, or torch onnx")

    work = Path(tempfile.mkdtemp(prefix="satsynth-bench-predict-", dir="/tmp"))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; work dir {work}")
    results: dict = {"runs": []}
    try:
        patches = _dubai_patches() if DUBAI.is_dir() else []
        print(f"imagery: {len(patches)} Dubai patches" if patches else
              "imagery: procedural (dubai-aerial absent)")
        specs = [(a.model, a.sizes)] + [(spec, [a.real_size]) for spec in a.real]
        for spec, sizes in specs:
            arch, encoder = spec.split(":")
            multiple = 1 if arch == "tiny" else 32
            model = work / f"seg_{arch}_{encoder}"
            make_model(model, arch, encoder)
            print(f"model {arch}/{encoder}, tile {a.tile}, overlap {a.overlap}, batch "
                  f"{a.batch}:", flush=True)
            for size in sizes:
                image = work / f"image_{size}.tif"
                if not image.exists():
                    t = time.perf_counter()
                    build_raster(image, size, a.gsd, patches)
                    print(f"  built {image.name} ({image.stat().st_size / 2**20:.0f} MB JPEG "
                          f"GeoTIFF) in {time.perf_counter() - t:.0f} s", flush=True)
                bench = bench_runtimes if both else bench_size
                r = bench(model, image, size, a.gsd, a.tile, a.overlap, a.batch, multiple, work)
                results["runs"].append({"model": spec, **r})
        by_size = {r["size"]: r for r in results["runs"] if r["model"] == a.model}
        if both:
            summarize_runtimes(results, by_size)
        elif 4096 in by_size and 16384 in by_size:
            small, big = by_size[4096], by_size[16384]
            ratio = big["peak_vmhwm_mb"] / small["peak_vmhwm_mb"]
            print(f"memory: 16384^2 peak {big['peak_vmhwm_mb']:.0f} MiB (target <= 1536 MiB = 1.5 GiB: "
                  f"{'met' if big['peak_vmhwm_mb'] <= 1536 else 'MISSED'}), "
                  f"{ratio:.3f}x the 4096^2 run (target <= 1.25: "
                  f"{'met' if ratio <= 1.25 else 'MISSED'})")
            results["memory_ratio"] = ratio
        for r in results["runs"] if not both else []:
            ok = "met" if r["overhead"] <= 0.15 else "MISSED"
            print(f"overhead {r['model']} {r['size']}^2: {100 * r['overhead']:+.1f}% "
                  f"(target <= 15%: {ok})")
        if a.json:
            a.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
