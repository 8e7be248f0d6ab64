"""Check engine: is the SatSynth engine installed, which version, and which device will it use.

Runs ``satsynth check`` and reports the engine, torch, device and GPU.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputString,
)

from .. import runner
from ..paths import plugin_version
from .base import AlgorithmInfo, SatSynthAlgorithm, plain_errors


class CheckEngine(SatSynthAlgorithm):
    """Finds the SatSynth engine (a separate Python environment with PyTorch) and reports its
    version, its Python and torch versions, and the device it will compute on (CUDA GPU, Apple MPS
    or CPU) with the GPU's name.

    The engine is looked for in this order: the 'Engine Python' setting (Processing > Options >
    Providers > SatSynth), the SATSYNTH_PYTHON environment variable, the repository's .venv when the
    plugin runs from a source checkout, and 'satsynth' on PATH. When it is not found, the log says
    exactly where it looked and how to install it.
    """

    INFO = AlgorithmInfo("check_engine", "Check engine", group="engine", icon="check_engine")

    OUTPUTS = {
        "ENGINE": "Engine command",
        "ENGINE_SOURCE": "Where the engine was found",
        "VERSION": "SatSynth engine version",
        "PYTHON": "Engine Python version",
        "TORCH": "PyTorch version",
        "DEVICE": "Compute device (cuda, mps or cpu)",
        "GPU": "GPU name",
    }

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.add_outputs(QgsProcessingOutputString, **self.OUTPUTS)
        self.add_outputs(QgsProcessingOutputBoolean, GPU_AVAILABLE="A GPU is available")

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        with plain_errors():
            engine = runner.find_engine()
            feedback.pushInfo(f"Engine: {engine.describe()}")
            info = runner.check_engine(feedback, engine)
        device = str(info.get("device") or "cpu")
        gpu = info.get("gpu") or ""
        version = str(info.get("satsynth", "?"))
        feedback.pushInfo(
            f"SatSynth engine {version} (Python {info.get('python', '?')}, "
            f"torch {info.get('torch', '?')}) computes on {device.upper()}"
            + (f": {gpu}" if gpu else "") + ".")
        for key, value in sorted(info.items()):
            feedback.pushDebugInfo(f"  {key}: {value}")
        if device == "cpu":
            feedback.pushInfo("No GPU was found: training runs on the CPU. Use the 'tiny' preset "
                              "and few steps, or an engine with a CUDA build of torch on a GPU.")
        missing = [k for k, v in info.items() if isinstance(v, str) and v.startswith("missing")]
        if missing:
            feedback.reportError("The engine lacks these packages: " + ", ".join(missing)
                                 + ". Re-run 'Set up engine' or pip install them into the engine.",
                                 False)
        plugin = plugin_version()
        if version.split(".")[:2] != plugin.split(".")[:2]:
            feedback.pushWarning(f"The engine ({version}) and the plugin ({plugin}) differ in "
                                 "version; update the engine if a stage fails.")
        return {
            "ENGINE": " ".join(engine.command),
            "ENGINE_SOURCE": engine.source,
            "VERSION": version,
            "PYTHON": str(info.get("python", "")),
            "TORCH": str(info.get("torch", "")),
            "DEVICE": device,
            "GPU": str(gpu),
            "GPU_AVAILABLE": device in ("cuda", "mps"),
        }
