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
import multiprocessing
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
from rasters import ORIGIN, UTM, write_raster

from satsynth import progress
from satsynth.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SATSYNTH = [sys.executable, "-m", "satsynth"]
SIZE = 64
#: names of every temporary the engine writes (atomic renames, predict work folders, probes)
TEMP_RE = re.compile(r"(\.partial|\.work|\.old-\d+|\.satsynth-probe)")
TINY_GEN = ["--preset", "tiny", "--block-widths", "8,16", "--batch-size", "2", "--device", "cpu"]
TINY_SEG = ["--arch", "tiny", "--encoder", "w4d1", "--batch-size", "4", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


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
    ("experiment-batch-zero", "experiment {ds} --ratios 0 --batch-size 0 --out {root}/o",
     "o", ["ds"], "--batch-size must be >= 2", ""),
    ("demo-out-foreign", "demo --out {mydocs}", None, ["mydocs"],
     "not a SatSynth demo folder", "mydocs"),
    ("demo-chip-size-too-small", "demo --out {root}/o --chip-size 7", "o", [],
     "--chip-size must be in 8..4096, got 7", ""),
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


def _forked_main(argv: list[str], out: str, err: str) -> None:
    """The child of :class:`Forked`: ``main(argv)`` with stdout/stderr in files, then exit."""
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


def _fork_server() -> multiprocessing.context.BaseContext:
    """A fork server that has imported torch and the CLI but never computed: its children start
    in milliseconds, and none inherits an OpenMP thread pool (a child forked from a process whose
    pool has run blocks forever in its first parallel region: GNU OpenMP is not fork-safe)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "satsynth.cli", "test_bad_inputs"])
    return ctx


class Forked:
    """``satsynth ARGV --progress json`` in a process forked from a fork server that has torch
    loaded: the same ``main()`` as the command, real signals and exit codes, without importing
    torch again in each of the fault runs (8 at once). stdout/stderr go to files (a full pipe
    would block it)."""

    def __init__(self, argv: list[str], logs: Path) -> None:
        self.args = argv
        out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
        out.touch()
        err.touch()
        self._proc = _fork_server().Process(target=_forked_main, args=(argv, str(out), str(err)))
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._proc.is_alive():
            self.returncode = self._proc.exitcode
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            raise AssertionError(f"{self.args[0]} did not stop within {timeout} s")
        return self.returncode


def _pause_when_working(procs: dict, logs: dict, timeout: float = 150) -> None:
    """Pause each run (SIGSTOP) as soon as it reports its second progress event (its work has
    begun), so that none finishes before the faults reach it however fast the machine is."""
    waiting = dict(procs)
    end = time.monotonic() + timeout
    while waiting and time.monotonic() < end and all(p.poll() is None for p in waiting.values()):
        for key, proc in list(waiting.items()):
            if logs[key].with_suffix(".out").read_text().count('"progress"') >= 2:
                proc.send_signal(signal.SIGSTOP)
                del waiting[key]
        time.sleep(0.1)
    for key, proc in waiting.items():
        raise AssertionError(f"no progress from {proc.args} (exit {proc.poll()}): "
                             f"{logs[key].with_suffix('.err').read_text()}")


STAGES = ("train-generator", "train-segmenter", "synthesize", "predict")


@pytest.fixture(scope="module")
def faults(w, tmp_path_factory):
    """Two long runs per stage at once (8 forked processes), each paused once its work has begun;
    meanwhile a second run to the same output (a new ``python -m satsynth`` process); then SIGTERM
    one run of each stage and kill -9 the other."""
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
    _pause_when_working(procs, logs)  # paused runs still hold their outputs' locks
    seconds = {key: subprocess.Popen([*SATSYNTH, *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
               for key, argv in runs.items()}
    second = {key: (p.wait(timeout=150), p.stderr.read()) for key, p in seconds.items()}
    running = {key: proc.poll() is None for key, proc in procs.items()}
    for (how, _), proc in procs.items():
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)  # a paused run takes its SIGTERM when it resumes
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
    (the killed one's PID is in their names) that SatSynth demonstrably made (the marker inside
    a temporary, a SatSynth output moved aside), keeps those of a live process and never
    touches a user's folder or file that merely has such a name."""
    from satsynth.io import TEMP_MARKER

    r = faults[("kill", stage)]
    assert r["code"] == -signal.SIGKILL
    out, dead = _out(r), r["pid"]

    def temporary(path: Path) -> Path:
        path.mkdir(exist_ok=True)
        (path / TEMP_MARKER).write_text(str(dead))
        return path

    # what a kill -9 during a save leaves (the run may have been killed between two saves)
    temporary(out.parent / f".{out.name}.{dead}-0badc0de.partial")
    temporary(out.parent / f".{out.stem}.{dead}-0badc0de.partial{out.suffix or '.json'}")
    moved_aside = out.parent / f".{out.name}.old-{dead}"
    moved_aside.mkdir(exist_ok=True)
    (moved_aside / "dataset.json").write_text('{"format": "satsynth-chips"}')
    # a user's own folder and file with names of the same pattern: never removed
    other = subprocess.Popen(["true"])
    other.wait()  # another PID that no longer runs
    users = [out.parent / f".{out.name}.{dead}-mine.partial",
             out.parent / f".{out.name}.old-{other.pid}"]
    users[0].mkdir()
    (users[0] / "notes.txt").write_text("mine")
    users[1].write_text("mine")
    live = subprocess.Popen(["sleep", "600"])
    planted_live = temporary(out.parent / f".{out.name}.{live.pid}-0badc0de.partial")
    try:
        assert len(leftovers(r["folder"])) >= 6
        kind = {"train-generator": "generator", "train-segmenter": "segmenter",
                "synthesize": "synthetic", "predict": "file"}[stage]
        assert run(["check-output", str(out), "--kind", kind])[0] == 0
        assert len(leftovers(r["folder"])) >= 6, "a plain check-output removed temporaries"
        argv = list(r["argv"])
        for opt, value in (("--steps", "1"), ("--epochs", "1"), ("--count", "2")):
            if opt in argv:
                argv[argv.index(opt) + 1] = value
        if stage == "predict":
            argv[argv.index("--image") + 1] = str(w["img"])
        code, err = run(argv)
        assert code == 0, err
        assert leftovers(r["folder"]) == sorted(str(p) for p in (planted_live, *users))
        assert (users[0] / "notes.txt").read_text() == "mine"
    finally:
        live.kill()
        live.wait()
        shutil.rmtree(planted_live)
        shutil.rmtree(users[0], ignore_errors=True)
        users[1].unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# outputs: what they may replace, the disk they fill, the names they take


def _refused(argv: list[str], says: str, names: str, kept: list[Path], root: Path) -> str:
    """Run ``argv``: exit 2, one error line saying ``says`` and naming ``names``, every file
    under ``kept`` byte-identical, no temporary under ``root``. Returns the line."""
    before = digest(kept)
    code, err = run(argv)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("satsynth: error: "), err
    assert says in lines[0] and names in lines[0], lines[0]
    assert digest(kept) == before
    assert leftovers(root) == []
    return lines[0]


def _predict(w: dict[str, Path], image: Path | None = None) -> list[str]:
    return ["predict", str(w["seg"]), "--image", str(image or w["img"]), "--device", "cpu",
            "--runtime", "torch"]


def test_single_file_outputs_replace_only_files_satsynth_wrote(w, tmp_path):
    """predict's --out, --confidence, --vector (and the .qml it writes beside --out and
    --vector) and export's --out never replace a file another program made; SatSynth's own are
    replaced."""
    import onnx
    from onnx import TensorProto, helper

    mine_tif = write_raster(tmp_path / "mine.tif", np.zeros((8, 8), np.uint8))
    mine_gpkg = tmp_path / "mine.gpkg"
    shutil.copy(w["aoi"], mine_gpkg)
    mine_onnx = tmp_path / "mine.onnx"
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                  "g", io_[:1], io_[1:])), str(mine_onnx))
    (tmp_path / "styled.qml").write_text("<qgis/>")
    kept = [tmp_path]
    for argv, victim in (
            ([*_predict(w), "--out", str(mine_tif)], mine_tif),
            ([*_predict(w), "--out", str(tmp_path / "a.tif"), "--confidence", str(mine_tif)],
             mine_tif),
            ([*_predict(w), "--out", str(tmp_path / "a.tif"), "--vector", str(mine_gpkg)],
             mine_gpkg),
            ([*_predict(w), "--out", str(tmp_path / "styled.tif")], tmp_path / "styled.qml"),
            ([*_predict(w), "--out", str(tmp_path / "a.tif"), "--vector",
              str(tmp_path / "styled.gpkg")], tmp_path / "styled.qml"),
            (["export", str(w["seg"]), "--out", str(mine_onnx)], mine_onnx)):
        line = _refused(argv, "not written by SatSynth", victim.name, kept, tmp_path)
        assert "delete" in line and "another name" in line
        assert not (tmp_path / "a.tif").exists() and not (tmp_path / "styled.tif").exists()
    # an earlier SatSynth output of the same kind is replaced
    ours = [*_predict(w), "--out", str(tmp_path / "p.tif"), "--confidence",
            str(tmp_path / "c.tif"), "--vector", str(tmp_path / "v.gpkg")]
    for argv in (ours, ours, ["export", str(w["seg"]), "--out", str(tmp_path / "m.onnx")],
                 ["export", str(w["seg"]), "--out", str(tmp_path / "m.onnx")]):
        code, err = run(argv)
        assert code == 0, err
    for style in ("p.qml", "v.qml"):  # the raster's and the polygons' style: SatSynth's
        assert run(["check-output", str(tmp_path / style), "--kind", "file"])[0] == 0
    assert leftovers(tmp_path) == []


def _vrt(path: Path, sources: list[Path], width: int, height: int) -> Path:
    """A VRT placing ``sources`` (3-band rasters of height ``height``) side by side."""
    bands = []
    for b in (1, 2, 3):
        simple, x = [], 0
        for src in sources:
            with rasterio.open(src) as s:
                w_ = s.width
            simple.append(
                f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename>'
                f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w_}\" "
                f'ySize="{height}"/><DstRect xOff="{x}" yOff="0" xSize="{w_}" '
                f'ySize="{height}"/></SimpleSource>')
            x += w_
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}">{"".join(simple)}'
                     "</VRTRasterBand>")
    gt = ", ".join(str(v) for v in ORIGIN.to_gdal())
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>'
                    f"{UTM.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>"
                    f"{''.join(bands)}</VRTDataset>")
    return path


def test_outputs_never_write_into_an_inputs_file_set(w, tmp_path):
    """An input is its whole file set: the sources of a VRT, the sidecars beside an input
    (.qml, .aux.xml, world files), a shapefile's parts. No output, nor the .qml predict writes
    beside --out and --vector, may be one of them."""
    import geopandas as gpd

    with rasterio.open(w["img"]) as src:
        img = src.read()
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    left = write_raster(tiles / "left.tif", img[:, :, : SIZE // 2])
    right = write_raster(tiles / "right.tif", img[:, :, SIZE // 2:],
                         transform=ORIGIN @ Affine.translation(SIZE // 2, 0))
    (tiles / "left.tif.aux.xml").write_text("<PAMDataset/>")
    (tiles / "left.tfw").write_text("0.5\n0\n0\n-0.5\n330000.25\n2789999.75\n")
    scene = _vrt(tmp_path / "scene.vrt", [left, right], SIZE, SIZE)
    (tmp_path / "scene.qml").write_text("<qgis>the user's style</qgis>")
    gpd.read_file(w["aoi"]).to_file(tmp_path / "zone.shp")
    (tmp_path / "zone.qml").write_text("<qgis>the user's style</qgis>")
    kept = [tmp_path]
    pred = [*_predict(w, scene), "--mask", str(tmp_path / "zone.shp")]
    for argv, says, names in (
            ([*pred, "--out", str(right)], "is a file of the input", "right.tif"),
            ([*pred, "--out", str(tmp_path / "p.tif"), "--confidence",
              str(tiles / "left.tif")], "is a file of the input", "left.tif"),
            ([*pred, "--out", str(tmp_path / "scene.tif")], "beside itself", "scene.qml"),
            ([*pred, "--out", str(tmp_path / "p.tif"), "--vector", str(tmp_path / "scene.gpkg")],
             "beside itself", "scene.qml"),
            ([*pred, "--out", str(tmp_path / "p.tif"), "--vector", str(tmp_path / "zone.dbf")],
             "GeoPackage", "zone.dbf"),
            ([*pred, "--out", str(tmp_path / "zone.tif")], "beside itself", "zone.qml"),
            (["prepare", "--image", str(scene), "--labels", str(w["lab"]), "--out",
              str(tiles), "--chip-size", "16"], "the output folder contains left.",
             "scene.vrt")):
        _refused(argv, says, names, kept, tmp_path)
    code, err = run([*pred, "--out", str(tmp_path / "p.tif")])  # the VRT itself works
    assert code == 0, err


def test_stale_cleanup_removes_only_what_satsynth_made(w, tmp_path):
    """Temporaries of a dead process go with the next run only when SatSynth demonstrably made
    them (its marker inside); a user's file or folder that merely matches the name pattern
    stays, and a plain check-output removes nothing."""
    from satsynth.io import TEMP_MARKER

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = gone.pid
    ours = tmp_path / f".p.{dead}-0badc0de.partial.tif"
    ours.mkdir()
    (ours / TEMP_MARKER).write_text(str(dead))
    users = [tmp_path / f".p.{dead}-final.work", tmp_path / f".p.{dead}-0badc0de.partial.tif.bak",
             tmp_path / f".p.tif.old-{dead}"]
    users[0].mkdir()
    (users[0] / "thesis.txt").write_text("precious")
    users[1].write_text("precious")
    users[2].mkdir()
    before = digest(users)
    assert run(["check-output", str(tmp_path / "p.tif"), "--kind", "file"])[0] == 0
    assert ours.is_dir(), "a plain check-output removed a temporary"
    code, err = run([*_predict(w), "--out", str(tmp_path / "p.tif")])
    assert code == 0, err
    assert not ours.exists()
    assert all(p.exists() for p in users) and digest(users) == before


FULL_DISK_STAGES = {
    "prepare": "prepare --image {img} --labels {lab} --out {disk}/ds --chip-size 16",
    "train-generator": "train-generator {ds} --out {disk}/gen --steps 2 " + " ".join(TINY_GEN),
    "synthesize": "synthesize {gen} --count 8 --steps 2 --sampler ddim --out {disk}/syn "
                  "--device cpu --batch-size 2",
    "train-segmenter": "train-segmenter {ds} --out {disk}/seg --max-steps 2 " + " ".join(TINY_SEG),
    "predict": "predict {seg} --image {img} --out {disk}/p.tif --confidence {disk}/c.tif "
               "--vector {disk}/v.gpkg --device cpu --runtime torch",
    "score-pairs": "score-pairs {disk}/syn --segmenter {seg} --device cpu",
    "export": "export {seg} --out {disk}/m.onnx",
}


@pytest.mark.parametrize("leave", [0, 16_000, 60_000])
def test_full_disk_is_one_line_and_leaves_nothing(w, small_disk, leave):
    """Every writing stage on a full or nearly full disk (the last bytes run out at different
    points of each stage): exit 2, one line naming the folder, no SIGBUS, no traceback, no
    partial output, inputs untouched; or, where the output fits, success."""
    disk = small_disk.path
    failed = 0
    for stage, template in FULL_DISK_STAGES.items():
        if stage == "score-pairs":
            shutil.copytree(w["syn"], disk / "syn")
        small_disk.fill(leave)
        before = digest([w["root"] / "inputs", w["ds"], w["gen"], w["seg"], disk / "syn"])
        code, err = run(_p({**w, "disk": disk}, template).split())
        lines = [ln for ln in error_lines(err) if not ln.startswith("WARNING: ")]
        assert code in (0, 2) and "Traceback" not in err, (stage, err)
        if code == 2:
            failed += 1
            assert len(lines) == 1 and str(disk) in lines[0], (stage, err)
            assert "space" in lines[0], (stage, lines[0])
            assert small_disk.left() == (["syn"] if stage == "score-pairs" else []), stage
        assert digest([w["root"] / "inputs", w["ds"], w["gen"], w["seg"], disk / "syn"]) \
            == before, stage
        assert leftovers(disk) == [], stage
        for p in disk.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert failed >= (len(FULL_DISK_STAGES) if leave == 0 else 1)


def test_unwritable_folders_and_odd_names_are_one_line(w, tmp_path, monkeypatch):
    """An output folder made immutable during the run, a 300-character name, a newline in
    --out and a split list that is not UTF-8: one line each, nothing left, inputs untouched."""
    kept = [w["root"] / "inputs", w["ds"]]
    _refused([*_predict(w), "--out", str(tmp_path / ("x" * 300 + ".tif"))], "too long",
             "choose a shorter name", kept, tmp_path)
    _refused([*_predict(w), "--out", str(tmp_path / "a\nb.tif")], "control character",
             "a\\nb.tif", kept, tmp_path)
    oem = tmp_path / "OpenEarthMap" / "aachen"
    for sub, data in (("images", np.zeros((3, 32, 32), np.uint8)),
                      ("labels", np.ones((32, 32), np.uint8))):
        (oem / sub).mkdir(parents=True)
        write_raster(oem / sub / "aachen_1.tif", data)
    (oem.parent / "train.txt").write_bytes(b"aachen_1.tif\n\xff\xfe caf\xe9.tif\n")
    _refused(["prepare", "--folder", str(oem.parent), "--layout", "openearthmap", "--out",
              str(tmp_path / "ds"), "--chip-size", "16"], "not UTF-8", "train.txt",
             [oem.parent], tmp_path)
    # the output's folder turns immutable after the checks (chattr +i, as root on ext4/xfs)
    box = tmp_path / "box"
    box.mkdir()
    if subprocess.run(["chattr", "+i", str(box)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    subprocess.run(["chattr", "-i", str(box)], check=True)
    import satsynth.segmenter.train as seg_train

    def check_then_lock(*args, **kwargs):
        out = seg_train_check(*args, **kwargs)
        subprocess.run(["chattr", "+i", str(box)], check=True)
        return out

    seg_train_check = seg_train.check_output
    monkeypatch.setattr(seg_train, "check_output", check_then_lock)
    try:
        _refused(["train-segmenter", str(w["ds"]), "--out", str(box / "seg"), "--max-steps",
                  "1", *TINY_SEG], "not permitted", str(box), kept, tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(box)], check=True)
    assert list(box.iterdir()) == []


def test_unknown_kind_and_failed_commands_leave_no_new_folder(w, tmp_path):
    """check-output with an unknown --kind exits 2 with one line; a command that fails after
    creating its output folder removes it (and the parents it made) again."""
    _refused(["check-output", str(tmp_path / "x"), "--kind", "segmentr"], "unknown output kind",
             "segmenter", [w["ds"]], tmp_path)
    out = tmp_path / "new" / "deeper" / "exp"
    _refused(["experiment", str(w["ds"]), "--ratios", "0", "--arch", "fpn", "--encoder",
              "resnet18", "--device", "cpu", "--out", str(out)], "multiple of 32", "",
             [w["ds"]], tmp_path)
    assert not (tmp_path / "new").exists()
