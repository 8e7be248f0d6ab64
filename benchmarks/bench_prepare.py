"""``satsynth prepare`` on a large raster: memory bounded by tiles, throughput, demo scene time.

A ``--size`` x ``--size`` RGB GeoTIFF (the demo scene repeated) with its label raster is prepared
twice, each run in its own process so that peak memory (ru_maxrss) is its own:

- *tiled*: the default reading, windows of at most 2048 x 2048 px;
- *whole*: one window holding the whole raster (what loading the raster at once would cost).

Printed: seconds, Mpx/s and peak resident memory (VmHWM, including about 120 MB of imported
libraries) of each, their ratios, and the size of the raster in memory. Target: tiled peak memory well below the raster's size, at no loss of speed.
Also timed: ``generate_scene`` at 2048 x 2048 px (target < 10 s).

    .venv/bin/python benchmarks/bench_prepare.py [--size 8192] [--chip-size 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from satsynth import progress
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
progress.set_mode("quiet")
img, lab, out, chip, span = sys.argv[1:6]
t = time.perf_counter()
prepare_dataset(out, images=img, labels=lab, chip_size=int(chip), tile_span=int(span))
dt = time.perf_counter() - t
n = len(ChipStore(out))
# VmHWM belongs to this process's address space; ru_maxrss would include the parent's peak,
# which Linux carries over fork + exec
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    peak = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "chips": n, "peak_mb": peak}))
"""


def make_raster(root: Path, size: int) -> tuple[Path, Path]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from satsynth.data.demo_scene import SCENE_CLASSES, render_scene

    block = 2048
    img, lab = render_scene(block, 0.5, seed=0)
    common = dict(driver="GTiff", width=size, height=size, crs="EPSG:32640",
                  transform=from_origin(330_000, 2_790_000, 0.5, 0.5), tiled=True,
                  blockxsize=256, blockysize=256)
    ip, lp = root / "big_image.tif", root / "big_labels.tif"
    with rasterio.open(ip, "w", count=3, dtype="uint8", **common) as di, \
            rasterio.open(lp, "w", count=1, dtype="uint8", **common) as dl:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                win = Window(c, r, w, h)
                di.write(img[:, :h, :w], window=win)
                dl.write(lab[None, :h, :w], window=win)
        dl.write_colormap(1, SCENE_CLASSES.colormap())
    return ip, lp


def run(img: Path, lab: Path, out: Path, chip: int, span: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(img), str(lab), str(out), str(chip),
                        str(span)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--chip-size", type=int, default=128)
    args = ap.parse_args()

    from satsynth.data.demo_scene import render_scene

    t = time.perf_counter()
    render_scene(2048, 0.5, seed=0)
    scene_s = time.perf_counter() - t
    print(f"demo scene 2048 x 2048 px: {scene_s:.2f} s (target < 10 s)")

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        img, lab = make_raster(root, args.size)
        mpx = args.size * args.size / 1e6
        raster_mb = args.size * args.size * 4 / 2**20  # 3 bands + labels, uint8
        print(f"raster: {args.size} x {args.size} px RGB uint8 + labels = {raster_mb:.0f} MB "
              f"in memory, chips of {args.chip_size} px")
        res = {}
        for name, span in (("tiled", 2048), ("whole", args.size)):
            res[name] = run(img, lab, root / f"ds_{name}", args.chip_size, span)
            r = res[name]
            print(f"{name:>6}: {r['seconds']:.1f} s, {mpx / r['seconds']:.1f} Mpx/s, "
                  f"{r['chips']} chips, peak memory {r['peak_mb']:.0f} MB")
        tiled, whole = res["tiled"], res["whole"]
        print(f"peak memory tiled / whole = {tiled['peak_mb'] / whole['peak_mb']:.2f}; "
              f"tiled peak / raster size = {tiled['peak_mb'] / raster_mb:.2f}; "
              f"time tiled / whole = {tiled['seconds'] / whole['seconds']:.2f}")


if __name__ == "__main__":
    main()
