"""QGIS for the plugin's tests: one offscreen QgsApplication with a throw-away profile, Processing
initialised, the SatSynth provider registered, and small rasters/vectors written by the tests."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# a throw-away profile: tests never read or write the user's QGIS settings
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = tempfile.mkdtemp(prefix="satsynth-qgis-profile-")
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
