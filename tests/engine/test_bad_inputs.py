"""The bad-input matrix: adverse inputs and faults run through the ``satsynth`` command line.

Every case asserts what a user relies on: exit code 2 (130 for a signal), one error line on
stderr naming the file and the problem (no traceback, no library dump), nothing at the final
output path, no temporary left anywhere, and every input byte-identical afterwards.

Most cases call the CLI's ``main()`` in this process (the same parsing, checks, error printing
and exit codes as the command; no interpreter start-up per case); the faults (SIGTERM, kill -9,
two runs at once) run real ``python -m satsynth`` processes. The tiny generator and segmenter are
trained once for the module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from satsynth import progress
from satsynth.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SATSYNTH = [sys.executable, "-m", "satsynth"]
UTM = CRS.from_epsg(32640)
ORIGIN = Affine(0.5, 0, 330_000, 0, -0.5, 2_790_000)
SIZE = 64
#: names of every temporary the engine writes (atomic renames, predict work folders, probes)
TEMP_RE = re.compile(r"(\.partial|\.work|\.old-\d+|\.satsynth-probe)")
TINY_GEN = ["--preset", "tiny", "--block-widths", "8,16", "--batch-size", "2", "--device", "cpu"]
TINY_SEG = ["--arch", "tiny", "--encoder", "w4d1", "--batch-size", "4", "--device", "cpu"]


def write_raster(path: Path, data: np.ndarray, crs=UTM, transform=ORIGIN, **kw) -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs,
                       transform=transform if crs is not None else None, **kw) as dst:
        dst.write(data)
    return path


def run(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stderr)."""
    progress.reset_cancel()
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([*argv, "--progress", "quiet"])
    return code, err.getvalue()


def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    out: dict[str, str] = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if TEMP_RE.search(p.name))


def error_lines(stderr: str) -> list[str]:
    """stderr without the engine's INFO log lines (progress notes, not errors)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("INFO: ")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """The inputs every case uses: rasters, a dataset, a tiny generator, synthetic pairs and a
    tiny segmenter, a user's folder, class files and model folders with bad configs."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    lab = np.zeros((SIZE, SIZE), np.uint8)
    lab[:, SIZE // 3:] = 1
    lab[SIZE // 2:, :] = 2
    img = np.clip(np.asarray([40, 128, 215], float)[lab][None].repeat(3, 0)
                  + rng.normal(0, 6, (3, SIZE, SIZE)), 0, 255).astype(np.uint8)
    d: dict[str, Path] = {"root": root}
    src = root / "inputs"
    src.mkdir()
    d["img"] = write_raster(src / "img.tif", img)
    d["lab"] = write_raster(src / "lab.tif", lab)
    far = Affine(0.5, 0, 430_000, 0, -0.5, 2_790_000)  # 100 km east
    d["lab_far"] = write_raster(src / "lab_far.tif", lab, transform=far)
    d["lab_nogeo"] = write_raster(src / "lab_nogeo.tif", lab, crs=None)
    d["lab_nogeo_small"] = write_raster(src / "lab_nogeo_small.tif", lab[:48, :48], crs=None)
    custom = CRS.from_proj4("+proj=lcc +lat_1=44 +lat_2=49 +lat_0=46.5 +lon_0=3 +x_0=700000 "
                            "+y_0=6600000 +ellps=intl +units=m +no_defs")
    d["img_custom"] = write_raster(src / "img_custom.tif", img, crs=custom,
                                   transform=Affine(0.5, 0, 2_600_090.25, 0, -0.5, 1_200_000))
    d["img_u16"] = write_raster(src / "img_u16.tif", (img.astype(np.uint16) * 16))
    d["img_u16_ok"] = write_raster(src / "img_u16_ok.tif", img.astype(np.uint16))
    d["img_f32"] = write_raster(src / "img_f32.tif", (img / 255.0).astype(np.float32))
    import geopandas as gpd
    from shapely.geometry import box

    x0, y1 = ORIGIN.c, ORIGIN.f
    d["aoi"] = src / "aoi.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[box(x0 + 4, y1 - 20, x0 + 20, y1 - 4)],
                     crs=UTM).to_file(d["aoi"])
    d["pickle"] = src / "weights.pth"
    d["pickle"].write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94"
                            b"\x8c\x04posix\x94\x8c\x06system\x94\x93\x94s.")
    classes = {
        "cls_float_id": {"classes": [{"id": 1.7, "name": "a"}, {"id": 2, "name": "b"}]},
        "cls_text_id": {"classes": [{"id": "one", "name": "a"}]},
        "cls_ignore": {"classes": [{"id": 0, "name": "a"}], "ignore_ids": ["x"]},
        "cls_dup": {"classes": [{"id": 0, "name": "Road"}, {"id": 1, "name": "road"}]},
        "cls_garbage": {"classes": "garbage"},
        "cls_color": {"classes": [{"id": 0, "name": "a", "color": ["r", "g", "b"]}]},
    }
    for name, body in classes.items():
        d[name] = src / f"{name}.json"
        d[name].write_text(json.dumps(body))
    d["mydocs"] = root / "mydocs"
    d["mydocs"].mkdir()
    (d["mydocs"] / "thesis.txt").write_text("precious")
    d["a_file"] = root / "notes.txt"
    d["a_file"].write_text("mine")

    run_ok = [
        ["prepare", "--image", str(d["img"]), "--labels", str(d["lab"]), "--out",
         str(root / "ds"), "--chip-size", "16", "--val-fraction", "0.25", "--block-size", "1"],
        ["train-generator", str(root / "ds"), "--out", str(root / "gen"), "--steps", "2",
         *TINY_GEN],
        ["synthesize", str(root / "gen"), "--count", "2", "--steps", "2", "--sampler", "ddim",
         "--out", str(root / "syn"), "--device", "cpu", "--batch-size", "2"],
        ["train-segmenter", str(root / "ds"), "--out", str(root / "seg"), "--max-steps", "2",
         *TINY_SEG],
    ]
    for argv in run_ok:
        code, err = run(argv)
        assert code == 0, err
    for name in ("ds", "gen", "syn", "seg"):
        d[name] = root / name
    for name, change in (("seg_garbage", {"classes": "garbage"}),
                         ("seg_float_id", {"classes": {"classes": [
                             {"id": 1.7, "name": "a"}, {"id": 2, "name": "b"},
                             {"id": 3, "name": "c"}]}}),
                         ("seg_norm", {"normalization": {"low": "x"}})):
        d[name] = root / name
        shutil.copytree(d["seg"], d[name])
        cfg = json.loads((d[name] / "config.json").read_text())
        cfg.update(change)
        (d[name] / "config.json").write_text(json.dumps(cfg))
    return d


def _p(w: dict[str, Path], text: str) -> str:
    """'{ds}/x' -> the path with the fixture's names filled in."""
    return re.sub(r"\{(\w+)\}", lambda m: str(w[m[1]]), text)


#: (case id, argv template, fresh output path or None, inputs that must stay identical,
#:  what the error line must say, the name it must mention)
CASES = [
    # --- prepare
    ("prepare-out-contains-inputs", "prepare --image {img} --labels {lab} --out {root}/inputs",
     None, ["inputs"], "contains the input", "inputs"),
    ("prepare-out-is-input", "prepare --image {img} --labels {lab} --out {lab}",
     None, ["inputs"], "also an input", "lab.tif"),
    ("prepare-out-foreign", "prepare --image {img} --labels {lab} --out {mydocs}",
     None, ["mydocs"], "not a SatSynth dataset folder", "mydocs"),
    ("prepare-out-other-kind", "prepare --image {img} --labels {lab} --out {gen}",
     None, ["gen"], "is a generator model folder", "gen"),
    ("prepare-out-file", "prepare --image {img} --labels {lab} --out {a_file}",
     None, ["a_file"], "is a file", "notes.txt"),
    ("prepare-out-proc", "prepare --image {img} --labels {lab} --out /proc/satsynth/ds",
     None, ["inputs"], "cannot write", "/proc"),
    # --- subset
    ("subset-out-is-its-dataset", "subset {ds} --train-fraction 0.5 --out {ds}",
     None, ["ds"], "also an input", "ds"),
    ("subset-out-foreign", "subset {ds} --train-fraction 0.5 --out {mydocs}",
     None, ["ds", "mydocs"], "not a SatSynth dataset folder", "mydocs"),
    ("classes-float-id", "prepare --image {img} --labels {lab} --classes {cls_float_id} "
     "--out {root}/o", "o", ["inputs"], "whole number, got 1.7", "cls_float_id.json"),
    ("classes-text-id", "prepare --image {img} --labels {lab} --classes {cls_text_id} "
     "--out {root}/o", "o", ["inputs"], "whole number, got 'one'", "cls_text_id.json"),
    ("classes-ignore-ids", "prepare --image {img} --labels {lab} --classes {cls_ignore} "
     "--out {root}/o", "o", ["inputs"], "ignore id must be a whole number", "cls_ignore.json"),
    ("classes-duplicate-names", "prepare --image {img} --labels {lab} --classes {cls_dup} "
     "--out {root}/o", "o", ["inputs"], "used twice", "cls_dup.json"),
    ("classes-garbage", "prepare --image {img} --labels {lab} --classes {cls_garbage} "
     "--out {root}/o", "o", ["inputs"], "non-empty list of classes", "cls_garbage.json"),
    ("classes-bad-colour", "prepare --image {img} --labels {lab} --classes {cls_color} "
     "--out {root}/o", "o", ["inputs"], "bad colour", "cls_color.json"),
    ("labels-far-away", "prepare --image {img} --labels {lab_far} --out {root}/o",
     "o", ["inputs"], "do not overlap", "lab_far.tif"),
    ("labels-no-georef-same-size", "prepare --image {img} --labels {lab_nogeo} --out {root}/o",
     "o", ["inputs"], "--labels-on-image-grid", "lab_nogeo.tif"),
    ("labels-on-grid-size-differs", "prepare --image {img} --labels {lab_nogeo_small} "
     "--labels-on-image-grid --out {root}/o", "o", ["inputs"], "labels are 48x48 px",
     "lab_nogeo_small.tif"),
    ("crs-custom-vs-epsg", "prepare --image {img_custom} --labels {lab} --out {root}/o",
     "o", ["inputs"], "custom CRS", "lab.tif"),
    ("image-missing", "prepare --image {root}/nope.tif --labels {lab} --out {root}/o",
     "o", ["inputs"], "not found", "nope.tif"),
    # --- train-generator
    ("gen-out-is-dataset", "train-generator {ds} --out {ds} --steps 1 " + " ".join(TINY_GEN),
     None, ["ds"], "also an input", "ds"),
    ("gen-out-contains-dataset", "train-generator {ds} --out {root} --steps 1",
     None, ["ds"], "contains the input", ""),
    ("gen-out-inside-dataset", "train-generator {ds} --out {ds}/model --steps 1",
     None, ["ds"], "inside the input folder", "model"),
    ("gen-out-foreign", "train-generator {ds} --out {mydocs} --steps 1",
     None, ["mydocs"], "not a SatSynth generator folder", "mydocs"),
    ("gen-out-segmenter", "train-generator {ds} --out {seg} --steps 1",
     None, ["seg"], "is a segmenter model folder", "seg"),
    ("gen-out-proc", "train-generator {ds} --out /proc/satsynth/gen --steps 1",
     None, ["ds"], "cannot write", "/proc"),
    # --- synthesize
    ("syn-out-is-generator", "synthesize {gen} --count 1 --out {gen}", None, ["gen"],
     "also an input", "gen"),
    ("syn-out-dataset", "synthesize {gen} --count 1 --out {ds}", None, ["ds"],
     "is a dataset folder", "ds"),
    ("syn-out-foreign", "synthesize {gen} --count 1 --out {mydocs}", None, ["mydocs"],
     "not a SatSynth synthetic folder", "mydocs"),
    # --- train-segmenter
    ("seg-out-is-dataset", "train-segmenter {ds} --out {ds}", None, ["ds"], "also an input",
     "ds"),
    ("seg-out-contains-dataset", "train-segmenter {ds} --out {root}", None, ["ds", "syn"],
     "contains the input", ""),
    ("seg-out-is-synthetic", "train-segmenter {ds} --synthetic {syn} --out {syn}", None,
     ["syn"], "also an input", "syn"),
    ("seg-out-generator", "train-segmenter {ds} --out {gen}", None, ["gen"],
     "is a generator model folder", "gen"),
    ("seg-encoder-pickle", "train-segmenter {ds} --out {root}/o --arch fpn --encoder resnet18 "
     "--encoder-weights {pickle} --max-steps 1 --device cpu", "o", ["ds", "inputs"],
     "cannot read encoder weights", "weights.pth"),
    ("seg-chips-too-small", "train-segmenter {ds} --out {root}/o --arch fpn --encoder "
     "resnet18 --max-steps 1 --device cpu", "o", ["ds"], "multiple of 32", ""),
    # --- evaluate
    ("eval-out-file", "evaluate {seg} --dataset {ds} --out {a_file}", None, ["a_file"],
     "is a file", "notes.txt"),
    ("eval-out-is-model", "evaluate {seg} --dataset {ds} --out {seg}", None, ["seg"],
     "also an input", "seg"),
    ("eval-out-foreign", "evaluate {seg} --dataset {ds} --out {mydocs}", None, ["mydocs"],
     "not a SatSynth evaluation folder", "mydocs"),
    ("eval-labels-far-away", "evaluate {seg} --image {img} --labels {lab_far} --out {root}/o "
     "--device cpu", "o", ["inputs", "seg"], "do not overlap", "lab_far.tif"),
    ("eval-model-classes-garbage", "evaluate {seg_garbage} --dataset {ds} --out {root}/o",
     "o", ["seg_garbage"], "non-empty list of classes", "config.json"),
    # --- predict
    ("predict-vector-is-mask", "predict {seg} --image {img} --out {root}/p.tif --vector {aoi} "
     "--mask {aoi} --device cpu", "p.tif", ["inputs"], "also an input", "aoi.gpkg"),
    ("predict-out-is-image", "predict {seg} --image {img} --out {img} --device cpu", None,
     ["inputs"], "also an input", "img.tif"),
    ("predict-out-in-model", "predict {seg} --image {img} --out {seg}/p.tif --device cpu",
     None, ["seg"], "inside the input folder", "p.tif"),
    ("predict-out-proc", "predict {seg} --image {img} --out /proc/satsynth/p.tif --device cpu",
     None, ["inputs"], "cannot write", "/proc"),
    ("predict-uint16-scale", "predict {seg} --image {img_u16} --out {root}/p.tif --device cpu",
     "p.tif", ["inputs"], "gdal_translate -ot Byte -scale", "img_u16.tif"),
    ("predict-float-reflectance", "predict {seg} --image {img_f32} --out {root}/p.tif "
     "--device cpu", "p.tif", ["inputs"], "another scale", "img_f32.tif"),
    ("predict-model-classes-garbage", "predict {seg_garbage} --image {img} --out {root}/p.tif",
     "p.tif", ["seg_garbage"], "non-empty list of classes", "config.json"),
    ("predict-model-float-id", "predict {seg_float_id} --image {img} --out {root}/p.tif",
     "p.tif", ["seg_float_id"], "whole number, got 1.7", "config.json"),
    ("predict-model-normalization", "predict {seg_norm} --image {img} --out {root}/p.tif",
     "p.tif", ["seg_norm"], "normalization", "config.json"),
    ("predict-same-out-and-confidence", "predict {seg} --image {img} --out {root}/p.tif "
     "--confidence {root}/p.tif", "p.tif", ["inputs"], "must be different", ""),
    # --- experiment, demo
    ("experiment-out-is-dataset", "experiment {ds} --ratios 0 --out {ds}", None, ["ds"],
     "also an input", "ds"),
    ("experiment-out-foreign", "experiment {ds} --ratios 0 --out {mydocs}", None, ["mydocs"],
     "not a SatSynth experiment folder", "mydocs"),
    ("demo-out-foreign", "demo --out {mydocs}", None, ["mydocs"],
     "not a SatSynth demo folder", "mydocs"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(w, case):
    _, template, fresh, keep, says, names = case
    argv = _p(w, template).split()
    if argv[0] == "prepare":
        argv += ["--chip-size", "16"]
    kept = [w[k] if k in w else w["root"] / k for k in keep]
    before = digest(kept)
    code, err = run(argv)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("satsynth: error: ") and "Traceback" not in err
    assert says in lines[0], lines[0]
    assert names in lines[0], lines[0]
    assert "weights_only" not in err and "{" not in lines[0] and "e+0" not in lines[0]
    assert len(lines[0].replace(str(w["root"]), "")) < 400, lines[0]
    if fresh:
        assert not (w["root"] / fresh).exists()
    assert digest(kept) == before
    assert leftovers(w["root"]) == []


def test_read_only_folder_refused_before_work(w, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the /proc cases cover this")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = run(["train-segmenter", str(w["ds"]), "--out", str(ro / "seg"),
                         *TINY_SEG, "--max-steps", "1"])
    finally:
        ro.chmod(0o755)
    assert code == 2 and "cannot write" in err and len(error_lines(err)) == 1


def test_works_labels_on_image_grid_and_uint16_on_the_training_scale(w, tmp_path):
    """Cases that must keep working: a mask of the image's size without georeference, and a
    uint16 image holding the training images' values."""
    before = digest([w["root"] / "inputs"])
    code, err = run(["prepare", "--image", str(w["img"]), "--labels", str(w["lab_nogeo"]),
                     "--labels-on-image-grid", "--out", str(tmp_path / "ds"), "--chip-size", "16"])
    assert code == 0, err
    code, err = run(["predict", str(w["seg"]), "--image", str(w["img_u16_ok"]), "--out",
                     str(tmp_path / "p.tif"), "--device", "cpu"])
    assert code == 0, err
    with rasterio.open(tmp_path / "p.tif") as a:
        assert a.crs == UTM
    code, err = run(["evaluate", str(w["seg"]), "--image", str(w["img"]), "--labels",
                     str(w["lab_nogeo"]), "--labels-on-image-grid", "--out",
                     str(tmp_path / "ev"), "--device", "cpu"])
    assert code == 0, err
    assert digest([w["root"] / "inputs"]) == before


def test_outputs_replace_their_own_kind_and_respect_the_umask(w, tmp_path):
    """An earlier output of the same kind is replaced; folders and files follow the umask."""
    seg = tmp_path / "seg"
    old = os.umask(0o022)
    try:
        for _ in range(2):
            code, err = run(["train-segmenter", str(w["ds"]), "--out", str(seg),
                             "--max-steps", "1", *TINY_SEG])
            assert code == 0, err
    finally:
        os.umask(old)
    assert seg.stat().st_mode & 0o777 == 0o755
    assert {f.stat().st_mode & 0o777 for f in seg.iterdir()} == {0o644}
    assert leftovers(tmp_path) == []


def test_check_output_command_for_the_plugin(w):
    code, err = run(["check-output", str(w["ds"]), "--kind", "segmenter", "--input",
                     str(w["ds"])])
    assert code == 2 and "also an input" in err
    code, err = run(["check-output", str(w["root"] / "new"), "--kind", "segmenter", "--input",
                     str(w["ds"])])
    assert code == 0, err


# --------------------------------------------------------------------------------------------
# faults: SIGTERM, kill -9, two runs at once (real processes)

def _long_runs(w: dict[str, Path], out: Path, big: Path) -> dict[str, list[str]]:
    """One command per stage that runs long enough to be interrupted, each in its own folder."""
    o = {name: out / name for name in STAGES}
    for folder in o.values():
        folder.mkdir()
    return {
        "train-generator": ["train-generator", str(w["ds"]), "--out", str(o["train-generator"] /
                            "gen"), "--steps", "100000", "--checkpoint-every", "1", *TINY_GEN],
        "train-segmenter": ["train-segmenter", str(w["ds"]), "--out", str(o["train-segmenter"] /
                            "seg"), "--epochs", "100000", "--patience", "0", *TINY_SEG],
        "synthesize": ["synthesize", str(w["gen"]), "--count", "100000", "--steps", "2",
                       "--sampler", "ddim", "--out", str(o["synthesize"] / "syn"), "--device",
                       "cpu", "--batch-size", "2"],
        "predict": ["predict", str(w["seg"]), "--image", str(big), "--out",
                    str(o["predict"] / "p.tif"), "--vector", str(o["predict"] / "p.gpkg"),
                    "--device", "cpu", "--tile", "128", "--overlap", "16", "--batch", "1",
                    "--runtime", "torch"],  # the ONNX runtime writes into SEG_DIR: see below
    }


class Forked:
    """``satsynth ARGV --progress json`` in a child process forked from this one: the same
    ``main()`` as the command, real signals and exit codes, without importing torch again in
    each of the fault runs (8 at once). stdout/stderr go to files (a full pipe would block it)."""

    def __init__(self, argv: list[str], logs: Path) -> None:
        self.args = argv
        out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                progress.reset_cancel()
                code = main([*argv, "--progress", "json"])
            except BaseException:  # noqa: BLE001 - report, then leave the child
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"{self.args[0]} did not stop within {timeout} s")
            time.sleep(0.1)
        return self.returncode


def _wait_working(proc: Forked, logs: Path, timeout: float = 150) -> None:
    """Until the run reports its second progress event (its work has begun)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if logs.with_suffix(".out").read_text().count('"progress"') >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"no progress from {proc.args}: {logs.with_suffix('.err').read_text()}")


STAGES = ("train-generator", "train-segmenter", "synthesize", "predict")


@pytest.fixture(scope="module")
def faults(w, tmp_path_factory):
    """Two long runs per stage at once (8 forked processes); while each works, a second run to
    the same output (a new ``python -m satsynth`` process); then SIGTERM one run of each stage and
    kill -9 the other."""
    results: dict[tuple[str, str], dict] = {}
    root = tmp_path_factory.mktemp("faults")
    with rasterio.open(w["img"]) as src:
        write_raster(root / "big.tif", np.tile(src.read(), (1, 64, 64)))  # 4096 x 4096 px
    inputs = [w["ds"], w["gen"], w["seg"], root / "big.tif"]
    before = digest(inputs)
    runs = {}
    for how in ("term", "kill"):
        (root / how).mkdir()
        for name, argv in _long_runs(w, root / how, root / "big.tif").items():
            runs[(how, name)] = argv
    logs = {key: root / f"{key[0]}-{key[1]}-log" for key in runs}
    procs = {key: Forked(argv, logs[key]) for key, argv in runs.items()}
    for key, proc in procs.items():
        _wait_working(proc, logs[key])
    seconds = {key: subprocess.Popen([*SATSYNTH, *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
               for key, argv in runs.items()}
    second = {key: (p.wait(timeout=150), p.stderr.read()) for key, p in seconds.items()}
    running = {key: proc.poll() is None for key, proc in procs.items()}
    for (how, _), proc in procs.items():
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
    for key, proc in procs.items():
        code = proc.wait(timeout=150)
        seconds[key].stderr.close()
        results[key] = {
            "code": code, "stderr": logs[key].with_suffix(".err").read_text(),
            "second": second[key], "running": running[key], "pid": proc.pid,
            "folder": root / key[0] / key[1], "argv": runs[key],
            "inputs_same": digest(inputs) == before}
    return results


def test_predict_changes_no_file_of_the_model_folder(w, tmp_path):
    """Every file of the model folder is byte-identical after predict; the one addition allowed
    is the ONNX export that the onnx runtime caches beside the weights (issue 15)."""
    model = tmp_path / "seg"
    shutil.copytree(w["seg"], model, ignore=shutil.ignore_patterns("*.onnx"))  # no cache yet
    before = digest([model])
    code, err = run(["predict", str(model), "--image", str(w["img"]), "--out",
                     str(tmp_path / "p.tif"), "--device", "cpu"])
    assert code == 0, err
    after = digest([model])
    assert {k: after[k] for k in before} == before
    added = sorted(Path(k).name for k in set(after) - set(before))
    assert all(re.fullmatch(r"model\.\d+x\d+\.onnx", n) for n in added), added


def _out(r: dict) -> Path:
    return Path(r["argv"][r["argv"].index("--out") + 1])


@pytest.mark.parametrize("stage", STAGES)
def test_second_run_to_the_same_output_is_refused(faults, stage):
    for how in ("term", "kill"):
        r = faults[(how, stage)]
        code, err = r["second"]
        assert r["running"], "the first run ended before the second was refused"
        assert code == 2, err
        lines = error_lines(err)
        assert len(lines) == 1 and "another SatSynth run is writing this output" in lines[0], err
        assert _out(r).name in lines[0]
        assert r["inputs_same"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_exits_130_and_leaves_no_partial_output(faults, stage):
    r = faults[("term", stage)]
    assert r["code"] == 130, r["stderr"]
    assert "Traceback" not in r["stderr"]
    assert leftovers(r["folder"]) == [], r["stderr"]
    assert r["inputs_same"]
    if stage == "train-generator":  # stops after its checkpoint, which --resume continues
        assert "--resume" in r["stderr"] and (_out(r) / "config.json").is_file()
    else:
        assert sorted(p.name for p in r["folder"].iterdir()) == []


@pytest.mark.parametrize("stage", STAGES)
def test_kill9_leftovers_go_with_the_next_run_but_never_a_live_runs(w, faults, stage):
    """kill -9 leaves temporaries; the next run of the stage removes those of dead processes
    (the killed one's PID is in their names) and keeps those of a live process."""
    r = faults[("kill", stage)]
    assert r["code"] == -signal.SIGKILL
    out, dead = _out(r), r["pid"]
    # what a kill -9 during a save leaves (the run may have been killed between two saves)
    (out.parent / f".{out.name}.{dead}-0badc0de.partial").mkdir(exist_ok=True)
    (out.parent / f".{out.name}.old-{dead}").mkdir(exist_ok=True)
    (out.parent / f".{out.stem}.{dead}-0badc0de.partial{out.suffix or '.json'}").write_text("x")
    live = subprocess.Popen(["sleep", "600"])
    planted_live = out.parent / f".{out.name}.{live.pid}-0badc0de.partial"
    planted_live.mkdir()
    try:
        assert len(leftovers(r["folder"])) >= 4
        argv = list(r["argv"])
        for opt, value in (("--steps", "1"), ("--epochs", "1"), ("--count", "2")):
            if opt in argv:
                argv[argv.index(opt) + 1] = value
        if stage == "predict":
            argv[argv.index("--image") + 1] = str(w["img"])
        code, err = run(argv)
        assert code == 0, err
        assert leftovers(r["folder"]) == [str(planted_live)]
    finally:
        live.kill()
        live.wait()
        planted_live.rmdir()
