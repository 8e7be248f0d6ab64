"""The GPU path, end to end: every stage on one CUDA GPU, at the paper's scale for a short budget,
each output checked, with per-stage throughput and peak GPU memory.

    scripts/gpu_check.sh            # or: make gpu-check; .venv/bin/python scripts/gpu_check.py

On a CUDA machine (about 8 minutes; ``--minutes`` sets the paper generator's budget, 2.5): the Dubai
data in ``../shared/datasets/dubai-aerial`` (or ``--data``) prepared as 128 px chips (Tile 6 val,
Tile 7 test); ``train-generator --recipe paper`` (base UNet, 128 px) in bf16; a 32 px base and a
4x upsampler briefly (the cascade); ``synthesize`` from the paper generator and through the
cascade; ``train-segmenter`` FPN/ResNet-50 with fp16 AMP on real + cascade pairs; ``predict`` over
an 8192 x 8192 raster (Dubai pixels tiled) with PyTorch and, where onnxruntime has the CUDA
provider, with ONNX Runtime on it. Every stage runs as ``python -m satsynth`` in its own process,
as a user runs it. Exits 1 on any failed stage or check; without a GPU it says so and exits 0.
Peak GPU memory is what torch's allocator held in the stage's process (``max_memory_allocated``;
ONNX Runtime's own CUDA arena is not in it). Budgets: generator 2.5 min, base 0.5, upsampler
0.75, segmenter 0.75; preparing the Dubai chips and predicting 8192^2 twice take the rest.

``--tiny`` (or ``SATSYNTH_GPU_CHECK_TINY=1``) runs the same chain and checks on the CPU at toy
scale (a generated 256 px scene, 32 px chips, a few steps, in-process) in well under a minute:
``tests/engine/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO.parent / "shared" / "datasets" / "dubai-aerial"
TINY_ENV = "SATSYNTH_GPU_CHECK_TINY"
#: predict's two runtimes must give the same class on at least this share of the pixels
AGREEMENT = 0.999


class CheckFailed(Exception):
    """A stage's output is missing or wrong (the message says what)."""


@dataclass
class Scale:
    """What one mode runs: the device, sizes, budgets and the extra options of each stage."""

    tiny: bool
    device: str
    chip: int
    base: int
    factor: int
    raster: int
    count: int
    generator: list[str]
    base_generator: list[str]
    upsampler: list[str]
    sampling: list[str]
    segmenter: list[str]


def scale(tiny: bool, minutes: float) -> Scale:
    """The toy CPU chain, or the paper's scale on one GPU for a short budget."""
    if tiny:
        quick = ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--device", "cpu"]
        return Scale(True, "cpu", 32, 16, 2, 384, 4, quick, [*quick, "--size", "16"],
                     ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--device", "cpu"],
                     ["--sampler", "ddim", "--steps", "2", "--device", "cpu"],
                     ["--arch", "fpn", "--encoder", "resnet18", "--max-steps", "2",
                      "--batch-size", "4", "--device", "cpu"])
    gpu = ["--device", "cuda", "--mixed-precision", "bf16"]
    return Scale(False, "cuda", 128, 32, 4, 8192, 64,
                 ["--recipe", "paper", "--minutes", f"{minutes:g}", *gpu],
                 ["--size", "32", "--preset", "small", "--minutes", "0.5", *gpu],
                 ["--preset", "small", "--minutes", "0.75", *gpu],
                 ["--sampler", "ddim", "--steps", "50", "--device", "cuda"],
                 ["--arch", "fpn", "--encoder", "resnet50", "--mixed-precision", "fp16",
                  "--minutes", "0.75", "--batch-size", "32", "--device", "cuda"])


@dataclass
class Report:
    """One row per stage: seconds, throughput, peak GPU memory, and what failed."""

    rows: list[tuple[str, float, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, stage: str, seconds: float, rate: str, peak: int | None) -> None:
        mem = f"{peak / 2**30:.2f} GiB" if peak else "-"
        self.rows.append((stage, seconds, rate, mem))
        print(f"[ok] {stage}: {seconds:.1f} s, {rate}, peak GPU memory {mem}", flush=True)

    def fail(self, stage: str, why: str) -> None:
        self.failures.append(f"{stage}: {why}")
        print(f"[FAILED] {stage}: {why}", flush=True)

    def table(self) -> str:
        lines = ["| stage | seconds | throughput | peak GPU memory |", "|---|---:|---|---:|"]
        lines += [f"| {s} | {t:.1f} | {r} | {m} |" for s, t, r, m in self.rows]
        return "\n".join(lines)


def run_stage(argv: list[str], isolate: bool) -> tuple[dict[str, Any], float, int | None]:
    """Run ``satsynth ARGV --progress json``; returns its outputs, wall seconds and the peak GPU
    memory its process allocated (None on a CPU). Raises CheckFailed with the error line."""
    argv = [*argv, "--progress", "json"]
    t = time.perf_counter()
    if isolate:
        with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak_file:
            r = subprocess.run([sys.executable, __file__, "--child", peak_file.name, "--", *argv],
                               capture_output=True, text=True)
            peak_text = Path(peak_file.name).read_text().strip()
        rc, out, err = r.returncode, r.stdout, r.stderr
        peak = int(peak_text) if peak_text else None
    else:
        from satsynth.cli import main

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(argv)
        out, err, peak = buf.getvalue(), "", None
    seconds = time.perf_counter() - t
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    done = [e for e in events if e.get("event") == "done"]
    if rc != 0 or not done:
        errors = [e.get("message", "") for e in events if e.get("event") == "error"]
        tail = (errors or [ln for ln in err.splitlines() if ln.strip()] or ["no output"])[-1]
        raise CheckFailed(f"`satsynth {' '.join(argv[:1])}` exited {rc}: {tail}")
    return dict(done[-1].get("outputs") or {}), seconds, peak


def _child(peak_path: str, argv: list[str]) -> int:
    """A stage in its own process: the CLI, then the peak GPU memory into ``peak_path``."""
    import torch

    from satsynth.cli import main

    try:
        return main(argv)
    finally:
        if torch.cuda.is_available():
            Path(peak_path).write_text(str(torch.cuda.max_memory_allocated()))


# ------------------------------------------------------------------------------------------
# the checks of each output


def check_model(folder: Path, kind: str) -> tuple[dict[str, Any], float | None]:
    """A model folder: config.json of ``kind``, its weights, finite losses in its log. Returns
    the config and the training seconds its log records (None without a log)."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckFailed(f"{folder} has no config.json")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("kind") != kind:
        raise CheckFailed(f"{cfg_path} is of kind {cfg.get('kind')!r}, not {kind!r}")
    if not (folder / "model.safetensors").is_file():
        raise CheckFailed(f"{folder} has no model.safetensors")
    log = folder / "train_log.csv"
    if not log.is_file():
        return cfg, None
    import csv

    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")]
    if not losses or not all(math.isfinite(v) for v in losses):
        raise CheckFailed(f"{log}: {len(losses)} losses, not all finite")
    return cfg, float(rows[-1].get("elapsed_s") or 0) or None


def check_synthetic(folder: Path, count: int, chip: int, ids: set[int]) -> None:
    """``count`` pairs of ``chip`` px whose masks hold only the dataset's class ids."""
    from satsynth.data.store import ChipStore

    store = ChipStore(folder)
    n = store.count("train")
    if n != count:
        raise CheckFailed(f"{folder}: {n} pairs, asked for {count}")
    chips = store.split("train")
    img, lab = chips.images[0], chips.labels[0]
    if img.shape[-1] != chip or lab.shape[-1] != chip:
        raise CheckFailed(f"{folder}: chips of {img.shape[-1]} px, expected {chip}")
    table = store.meta.classes
    found = {table.classes[int(i)].id for i in np.unique(chips.labels[: min(n, 16)])
             if int(i) < table.num_classes}
    if not found or not found <= ids:
        raise CheckFailed(f"{folder}: mask classes {sorted(found)} outside {sorted(ids)}")


def check_prediction(path: Path, size: int, ids: set[int]) -> np.ndarray:
    """A ``size`` x ``size`` class raster holding only class ids (and nodata 255)."""
    import rasterio

    with rasterio.open(path) as ds:
        if (ds.width, ds.height) != (size, size):
            raise CheckFailed(f"{path} is {ds.width} x {ds.height}, not {size} x {size}")
        data = ds.read(1)
    values = set(np.unique(data).tolist())
    if not values - {255} or not values - {255} <= ids:
        raise CheckFailed(f"{path}: values {sorted(values)[:10]} are not the class ids "
                          f"{sorted(ids)}")
    return data


# ------------------------------------------------------------------------------------------
# the data and the big raster


def prepare_data(sc: Scale, data: Path, work: Path, isolate: bool, rep: Report) -> Path:
    """The chip store every stage trains on (Dubai; a generated scene in the tiny mode)."""
    ds = work / "dataset"
    if sc.tiny:
        from satsynth.data.demo_scene import generate_scene

        scene = generate_scene(work / "scene", size=256, seed=1)
        argv = ["prepare", "--image", str(scene["image"]), "--labels", str(scene["labels"]),
                "--classes", str(scene["classes"]), "--test-fraction", "0.2"]
    else:
        if not (data / "Tile 7").is_dir():
            raise CheckFailed(f"the Dubai data are not in {data} (give --data)")
        argv = ["prepare", "--folder", str(data), "--val-sources", "Tile 6", "--test-sources",
                "Tile 7"]
    outputs, seconds, peak = run_stage([*argv, "--chip-size", str(sc.chip), "--out", str(ds)],
                                       isolate)
    from satsynth.data.store import ChipStore

    store = ChipStore(ds)
    n = store.count("train")
    if n < 8 or store.count("val") < 1:
        raise CheckFailed(f"{ds}: {n} training and {store.count('val')} validation chips")
    rep.add("prepare", seconds, f"{n / seconds:.1f} chips/s ({n} training chips)", peak)
    return ds


def big_raster(sc: Scale, source: Path, out: Path) -> Path:
    """A georeferenced ``raster`` x ``raster`` RGB GeoTIFF of ``source``'s pixels, tiled."""
    import rasterio
    from rasterio.transform import from_origin

    from satsynth.raster import quiet_georef_warnings

    with quiet_georef_warnings(), rasterio.open(source) as src:
        pixels = src.read(indexes=[1, 2, 3])
    n = sc.raster
    reps = (1, -(-n // pixels.shape[1]), -(-n // pixels.shape[2]))
    mosaic = np.tile(pixels, reps)[:, :n, :n]  # 192 MiB at 8192^2
    with rasterio.open(out, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8",
                       crs="EPSG:32640", transform=from_origin(500000, 2800000, 0.5, 0.5),
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(mosaic)
    return out


# ------------------------------------------------------------------------------------------
# the stages


def train_generators(sc: Scale, ds: Path, work: Path, isolate: bool, rep: Report
                     ) -> dict[str, Path]:
    """The paper generator, the cascade's base and its upsampler; steps/s from their configs."""
    folders = {"generator": work / "generator", "base": work / "base", "upsampler": work / "sr"}
    runs = [("generator", ["train-generator", str(ds), *sc.generator], "generator"),
            ("base", ["train-generator", str(ds), *sc.base_generator], "generator"),
            ("upsampler", ["train-upsampler", str(ds), "--base-size", str(sc.base), "--factor",
                           str(sc.factor), *sc.upsampler], "upsampler")]
    for name, argv, kind in runs:
        stage = f"train-{'upsampler' if kind == 'upsampler' else 'generator'} ({name})"
        try:
            _, seconds, peak = run_stage([*argv, "--out", str(folders[name])], isolate)
            cfg, train_s = check_model(folders[name], kind)
            steps = int(cfg.get("step") or 0)
            if steps < 1:
                raise CheckFailed(f"{folders[name]}: trained {steps} steps")
            mp = (cfg.get("training") or {}).get("mixed_precision")
            rep.add(stage, seconds, f"{steps / (train_s or seconds):.3g} steps/s ({steps} steps, "
                    f"{cfg.get('chip_size')} px, mixed precision {mp})", peak)
        except CheckFailed as exc:
            rep.fail(stage, str(exc))
    return folders


def synthesize(sc: Scale, models: dict[str, Path], work: Path, ids: set[int], isolate: bool,
               rep: Report) -> Path | None:
    """Pairs from the paper generator and through the cascade; pairs/s. Returns the cascade's."""
    out = None
    for name, extra in (("generator", []), ("cascade", ["--upsampler", str(models["upsampler"])])):
        src = models["generator" if name == "generator" else "base"]
        folder = work / f"synthetic_{name}"
        stage = f"synthesize ({name})"
        try:
            _, seconds, peak = run_stage(["synthesize", str(src), *extra, "--count",
                                          str(sc.count), *sc.sampling, "--out", str(folder)],
                                         isolate)
            check_synthetic(folder, sc.count, sc.chip, ids)
            rep.add(stage, seconds, f"{sc.count / seconds:.3g} pairs/s ({sc.count} pairs)", peak)
            out = folder if name == "cascade" else out
        except CheckFailed as exc:
            rep.fail(stage, str(exc))
    return out


def train_segmenter(sc: Scale, ds: Path, synthetic: Path | None, work: Path, isolate: bool,
                    rep: Report) -> Path | None:
    """FPN (AMP on the GPU) on real + synthetic pairs; optimizer steps/s."""
    seg = work / "segmenter"
    extra = ["--synthetic", str(synthetic), "--ratio", "1"] if synthetic else []
    try:
        outputs, seconds, peak = run_stage(["train-segmenter", str(ds), *extra, *sc.segmenter,
                                            "--out", str(seg)], isolate)
        check_model(seg, "segmenter")
        miou = outputs.get("miou")
        if not (isinstance(miou, (int, float)) and 0 <= miou <= 1):
            raise CheckFailed(f"validation mIoU {miou!r} is not a number in [0, 1]")
        metrics = json.loads((seg / "metrics.json").read_text())
        steps, train_s = int(metrics.get("steps") or 0), float(metrics.get("seconds") or 0)
        if steps < 1 or not all(math.isfinite(h.get("loss", math.nan))
                                for h in metrics.get("history") or [{}]):
            raise CheckFailed(f"{seg}: {steps} steps, losses not all finite")
        mp = (json.loads((seg / "config.json").read_text()).get("training", {})
              .get("options", {}).get("mixed_precision"))
        rep.add("train-segmenter", seconds, f"{steps / (train_s or seconds):.3g} steps/s "
                f"({steps} steps, mixed precision {mp}), val mIoU {miou:.3f}", peak)
        return seg
    except CheckFailed as exc:
        rep.fail("train-segmenter", str(exc))
        return None


def onnx_cuda() -> bool:
    """Whether the installed onnxruntime has the CUDA provider."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def predict(sc: Scale, seg: Path, raster: Path, work: Path, ids: set[int], isolate: bool,
            rep: Report) -> None:
    """The big raster with PyTorch and ONNX Runtime (on the GPU: its CUDA provider, where
    installed); megapixels/s; the two must agree."""
    runtimes = ["torch"]
    if sc.tiny or onnx_cuda():
        runtimes.append("onnx")
    else:
        print("[skip] predict (onnx): this onnxruntime has no CUDAExecutionProvider (pip install "
              "onnxruntime-gpu)", flush=True)
    classes = {}
    for runtime in runtimes:
        out, stage = work / f"pred_{runtime}.tif", f"predict ({runtime}, {sc.raster}^2)"
        try:
            _, seconds, peak = run_stage(["predict", str(seg), "--image", str(raster), "--out",
                                          str(out), "--runtime", runtime, "--device",
                                          sc.device], isolate)
            classes[runtime] = check_prediction(out, sc.raster, ids)
            rep.add(stage, seconds, f"{sc.raster ** 2 / 1e6 / seconds:.3g} megapixels/s", peak)
        except CheckFailed as exc:
            rep.fail(stage, str(exc))
    if len(classes) == 2:
        agree = float((classes["torch"] == classes["onnx"]).mean())
        print(f"predict: torch and onnx agree on {100 * agree:.4f} % of the pixels", flush=True)
        if agree < AGREEMENT:
            rep.fail("predict", f"torch and onnx agree on {100 * agree:.3f} % of the pixels "
                     f"(at least {100 * AGREEMENT:g} % expected)")


def run_all(sc: Scale, data: Path, work: Path, isolate: bool) -> Report:
    """Every stage in order; a failed stage is reported and those that need it are skipped."""
    rep = Report()
    try:
        ds = prepare_data(sc, data, work, isolate, rep)
    except CheckFailed as exc:
        rep.fail("prepare", str(exc))
        return rep
    from satsynth.data.store import ChipStore

    store = ChipStore(ds)
    ids = {c.id for c in store.classes.classes}
    models = train_generators(sc, ds, work, isolate, rep)
    synthetic = synthesize(sc, models, work, ids, isolate, rep) if not rep.failures else None
    seg = train_segmenter(sc, ds, synthetic, work, isolate, rep)
    if seg is not None:
        source = (work / "scene" / "scene_image.tif" if sc.tiny
                  else sorted((data / "Tile 7" / "images").iterdir())[0])
        predict(sc, seg, big_raster(sc, source, work / "big.tif"), work, ids, isolate, rep)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", default=bool(os.environ.get(TINY_ENV)),
                    help=f"the toy chain on the CPU, in-process (also {TINY_ENV}=1)")
    ap.add_argument("--data", type=Path, default=DUBAI, help="the Dubai aerial folder")
    ap.add_argument("--minutes", type=float, default=2.5,
                    help="the paper generator's training budget (default 2.5)")
    ap.add_argument("--work", type=Path, help="keep the outputs here (default: a temporary "
                                              "folder, removed)")
    a = ap.parse_args(argv)
    import torch

    if not a.tiny and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing was "
              "run")
        return 0
    sc = scale(a.tiny, a.minutes)
    if not a.tiny:
        print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}", flush=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="satsynth-gpu-check-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rep = run_all(sc, a.data, work, isolate=not a.tiny)
    print(f"\n{rep.table()}\n\ntotal {time.perf_counter() - t:.0f} s")
    if rep.failures:
        print("gpu-check FAILED:\n  " + "\n  ".join(rep.failures))
        return 1
    print("gpu-check passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--child" and sys.argv[3] == "--":
        sys.exit(_child(sys.argv[2], sys.argv[4:]))
    sys.exit(main())
