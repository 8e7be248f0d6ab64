"""QGIS for the plugin's tests: one offscreen QgsApplication with a throw-away profile, Processing
initialised, the SatSynth provider registered, and small rasters/vectors written by the tests."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# a throw-away profile: tests never read or write the user's QGIS settings
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = tempfile.mkdtemp(prefix="satsynth-qgis-profile-")
atexit.register(shutil.rmtree, os.environ["QGIS_CUSTOM_CONFIG_PATH"], True)
for p in (str(REPO), PROCESSING_PLUGINS):
    if p not in sys.path:
        sys.path.insert(0, p)

from qgis.core import QgsApplication, QgsProcessingFeedback  # noqa: E402

_APP = None


def qgis_app() -> QgsApplication:
    """The session's QgsApplication (GUI-capable, offscreen), with Processing initialised."""
    global _APP
    if _APP is None:
        _APP = QgsApplication([b"satsynth-tests"], True)
        QgsApplication.initQgis()
        from processing.core.Processing import Processing

        Processing.initialize()
    return _APP


qgis_app()


def stub_iface():
    """A stand-in for QgisInterface: a real main window and map canvas, everything else mocked."""
    from unittest import mock

    from qgis.gui import QgisInterface, QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow

    iface = mock.Mock(spec=QgisInterface)
    window = QMainWindow()
    canvas = QgsMapCanvas(window)
    iface.mainWindow.return_value = window
    iface.mapCanvas.return_value = canvas
    iface._keep = (window, canvas)
    return iface


_PROVIDERS: list = []  # Python providers must stay referenced while registered


def ensure_provider():
    """Register the SatSynth provider unless a live one is registered; returns it."""
    registry = QgsApplication.processingRegistry()
    live = [p for p in _PROVIDERS if registry.providerById("satsynth") is p]
    if live:
        return live[0]
    from satsynth_qgis.provider import SatSynthProvider

    prov = SatSynthProvider()
    assert registry.addProvider(prov)
    _PROVIDERS.append(prov)
    return prov


def remove_provider() -> None:
    """Take the SatSynth provider out of the registry (to test loading the plugin itself)."""
    registry = QgsApplication.processingRegistry()
    for p in list(_PROVIDERS):
        if registry.providerById("satsynth") is p:
            registry.removeProvider(p)
        _PROVIDERS.remove(p)
    assert registry.providerById("satsynth") is None


@pytest.fixture
def provider():
    """The SatSynth provider, registered in the Processing registry."""
    return ensure_provider()


@pytest.fixture
def project():
    """QgsProject.instance(), cleared before and after the test, with no saved dock settings."""
    from qgis.core import QgsProject, QgsSettings

    project = QgsProject.instance()
    project.clear()
    QgsSettings().remove("SatSynth/dock")
    yield project
    project.clear()


@pytest.fixture(scope="session")
def engine_python() -> str:
    """The engine the end-to-end tests use (SATSYNTH_PYTHON, else the checkout's .venv)."""
    value = os.environ.get("SATSYNTH_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(value).exists():
        pytest.skip(f"engine Python {value} absent (set SATSYNTH_PYTHON)")
    os.environ["SATSYNTH_PYTHON"] = value
    return value


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps every message and progress value it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.debug: list[str] = []
        self.console: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.texts: list[str] = []
        self.progress_values: list[float] = []
        self.commands: list[str] = []
        self.progressChanged.connect(self.progress_values.append)

    def pushInfo(self, text):
        self.infos.append(text)

    def pushDebugInfo(self, text):
        self.debug.append(text)

    def pushConsoleInfo(self, text):
        self.console.append(text)

    def pushWarning(self, text):
        self.warnings.append(text)

    def pushCommandInfo(self, text):
        self.commands.append(text)

    def reportError(self, text, fatalError=False):
        self.errors.append(text)

    def setProgressText(self, text):
        self.texts.append(text)

    def everything(self) -> str:
        return "\n".join(self.infos + self.debug + self.console + self.warnings + self.errors
                         + self.texts)


@pytest.fixture
def feedback() -> RecordingFeedback:
    return RecordingFeedback()


# --- small scenes written by the tests ------------------------------------------------------------

EPSG = 32633
ORIGIN = (500000.0, 5000000.0)  # top-left corner, metres
PIXEL = 1.0
SIZE = 128


def scene_arrays(size: int = SIZE, seed: int = 0):
    """A 3-band uint8 image and its labels: 0 background, 1 water (a disc), 2 forest (a strip)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.uint8)
    cx = cy = size * 0.32
    labels[(xx - cx) ** 2 + (yy - cy) ** 2 < (size * 0.24) ** 2] = 1
    labels[yy > size * 0.7] = 2
    base = np.array([[110, 120, 90], [40, 70, 160], [50, 110, 45]], np.uint8)  # per class RGB
    image = base[labels].transpose(2, 0, 1).astype(np.int16)
    image += rng.integers(-15, 16, image.shape)
    return image.clip(0, 255).astype(np.uint8), labels


def write_geotiff(path: Path, array, epsg: int = EPSG, origin=ORIGIN, pixel: float = PIXEL,
                  color_table: dict | None = None, nodata: float | None = None) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) uint8 array as a GeoTIFF with GDAL; a colour
    table (value -> RGBA) and a nodata value go on band 1."""
    from osgeo import gdal, osr

    arr = array if array.ndim == 3 else array[None]
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), arr.shape[2], arr.shape[1], arr.shape[0],
                                              gdal.GDT_Byte)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    ds.SetProjection(srs.ExportToWkt())
    for i in range(arr.shape[0]):
        ds.GetRasterBand(i + 1).WriteArray(arr[i])
    if nodata is not None:
        ds.GetRasterBand(1).SetNoDataValue(nodata)
    if color_table:
        ct = gdal.ColorTable()
        for value, rgba in color_table.items():
            ct.SetColorEntry(value, rgba)
        ds.GetRasterBand(1).SetRasterColorTable(ct)
    ds = None
    return path


def write_label_polygons(path: Path, features: list, layer: str = "labels",
                         epsg: int = EPSG) -> Path:
    """A GeoPackage layer of labelled polygons: ``features`` holds (geometry, attributes) pairs,
    a geometry as WKT or an OGR geometry; text attributes become text fields, whole numbers
    integer fields (in the order of the first feature's attributes)."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, srs, ogr.wkbPolygon)
    for name, value in features[0][1].items():
        lyr.CreateField(ogr.FieldDefn(name, ogr.OFTInteger if isinstance(value, int)
                                      else ogr.OFTString))
    for geom, attributes in features:
        feat = ogr.Feature(lyr.GetLayerDefn())
        for name, value in attributes.items():
            feat.SetField(name, value)
        feat.SetGeometry(geom if isinstance(geom, ogr.Geometry) else ogr.CreateGeometryFromWkt(geom))
        lyr.CreateFeature(feat)
    ds = None
    return path


def scene_polygons(size: int = SIZE) -> list:
    """The scene's classes as polygons with a 'landcover' name: a water disc, a forest strip."""
    from osgeo import ogr

    x0, y0 = ORIGIN
    cx, cy, r = x0 + size * 0.32 * PIXEL, y0 - size * 0.32 * PIXEL, size * 0.24 * PIXEL
    strip = (f"POLYGON(({x0} {y0 - size * 0.7}, {x0 + size} {y0 - size * 0.7}, "
             f"{x0 + size} {y0 - size}, {x0} {y0 - size}, {x0} {y0 - size * 0.7}))")
    return [(ogr.CreateGeometryFromWkt(f"POINT({cx} {cy})").Buffer(r, 16), {"landcover": "water"}),
            (strip, {"landcover": "forest"})]


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """Paths of a small labelled scene: image.tif, labels.tif, labels.gpkg (layer 'labels')."""
    folder = tmp_path_factory.mktemp("scene")
    image, labels = scene_arrays()
    return {
        "image": str(write_geotiff(folder / "image.tif", image)),
        "labels": str(write_geotiff(folder / "labels.tif", labels)),
        "vector": str(write_label_polygons(folder / "labels.gpkg", scene_polygons())),
        "folder": folder,
    }


def run_alg(alg_id: str, params: dict, load: bool = False, feedback=None):
    """Run a Processing algorithm like the toolbox does; with ``load`` the outputs are loaded
    into QgsProject.instance() (post-processors applied). Returns (results, feedback)."""
    import processing
    from processing.core.Processing import Processing  # noqa: F401 - initialised above
    from qgis.core import QgsProcessingContext, QgsProject

    feedback = feedback or RecordingFeedback()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    if load:
        results = processing.runAndLoadResults(alg_id, params, feedback=feedback, context=context)
    else:
        results = processing.run(alg_id, params, feedback=feedback, context=context)
    return results, feedback


def project_layer(path: str):
    """The layer of QgsProject.instance() whose source is ``path`` (or None)."""
    from qgis.core import QgsProject

    for layer in QgsProject.instance().mapLayers().values():
        if Path(layer.source().split("|")[0]).resolve() == Path(path).resolve():
            return layer
    return None


# --- the stages' outputs, shared by the end-to-end tests (tiny settings, CPU) -------------------

@pytest.fixture(scope="session")
def dataset(scene, engine_python, tmp_path_factory):
    """The scene prepared into 32 px chips (the dataset folder and the run's results)."""
    ensure_provider()
    out = tmp_path_factory.mktemp("dataset") / "ds"
    results, _ = run_alg("satsynth:prepare_chips", {
        "IMAGE": scene["image"], "LABELS": scene["labels"], "CHIP_SIZE": 32,
        "VAL_FRACTION": 0.25, "OUTPUT": str(out)}, load=True)
    return results


@pytest.fixture(scope="session")
def generator(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("generator") / "gen"
    results, fb = run_alg("satsynth:train_generator", {
        "DATASET": dataset["DATASET"], "PRESET": "tiny", "STEPS": 2, "BATCH_SIZE": 4,
        "DEVICE": "cpu", "OUTPUT": str(out)})
    return results, fb


@pytest.fixture(scope="session")
def synthetic(generator, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "syn"
    results, _ = run_alg("satsynth:synthesize", {
        "GENERATOR": generator[0]["GENERATOR"], "COUNT": 4, "SAMPLER": "dpm", "STEPS": 2,
        "DEVICE": "cpu", "OUTPUT": str(out)}, load=True)
    return results


@pytest.fixture(scope="session")
def segmenter(dataset, synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("segmenter") / "seg"
    results, _ = run_alg("satsynth:train_segmenter", {
        "DATASET": dataset["DATASET"], "SYNTHETIC": synthetic["SYNTHETIC"], "RATIO": 1.0,
        "ARCH": "tiny", "ENCODER": "w8d2", "EPOCHS": 1, "BATCH_SIZE": 4, "DEVICE": "cpu",
        "OUTPUT": str(out)})
    return results


@pytest.fixture
def engine_args(monkeypatch, provider, dataset, generator):
    """Every engine command the algorithms start, answered at once with fake outputs."""
    from satsynth_qgis import runner

    seen: list[list[str]] = []

    def fake_run_engine(args, feedback=None, **_options):
        if args[0] != "check-output":  # the output pre-check before every run is not a stage
            seen.append([str(a) for a in args])
        return runner.RunResult({"model": "m", "miou": 0.5}, list(args), 0.1)

    monkeypatch.setattr(runner, "run_engine", fake_run_engine)
    return seen


def flag_value(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in an engine command line, or None when it is not there."""
    return args[args.index(flag) + 1] if flag in args else None


# --- a tiny segmenter folder, made by the engine ---------------------------------------------------

TINY_SEGMENTER = r"""
import json, sys
from satsynth.checkpoint import save_model_dir
from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.segmenter.model import SegmenterConfig, build_segmenter

folder, classes, pixel_size, extra = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), \
    json.loads(sys.argv[4])
cfg = SegmenterConfig(arch="tiny", encoder="w4d1", in_channels=3,
                      classes=ClassTable.from_dict(classes),
                      normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"),
                      crs="EPSG:32633", pixel_size=[pixel_size, pixel_size], **extra)
save_model_dir(folder, "segmenter", cfg.to_dict(), {"model": build_segmenter(cfg).eval().state_dict()})
"""


def make_tiny_segmenter(engine_python: str, folder: Path, classes: list[dict],
                        pixel_size: float = 1.0, **config) -> Path:
    """A tiny untrained segmenter folder (3 bands, EPSG:32633), saved by the engine's Python.

    Args:
        engine_python (`str`):
            The engine's interpreter (the ``engine_python`` fixture).
        folder (`Path`):
            The model folder to write.
        classes (`list[dict]`):
            The class table (``ClassTable.from_dict``'s form).
        pixel_size (`float`, *optional*, defaults to 1.0):
            The training pixel size it records, in metres.
        **config:
            Other ``SegmenterConfig`` fields (e.g. ``chip_size``).

    Returns:
        `Path`: ``folder``.
    """
    import json
    import subprocess

    res = subprocess.run([engine_python, "-c", TINY_SEGMENTER, str(folder), json.dumps(classes),
                          str(pixel_size), json.dumps(config)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (folder / "config.json").is_file()
    return folder


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the state follows the command name, which may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
