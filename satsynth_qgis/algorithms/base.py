"""What every SatSynth algorithm shares: naming, icons, help, and running the engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .. import runner
from ..paths import icon_path

#: Group id -> display name; one group per stage of the pipeline.
GROUPS = {
    "engine": "0. Engine",
    "data": "1. Prepare data",
    "generator": "2. Joint generator",
    "segmenter": "3. Segmenter",
    "prediction": "4. Prediction",
    "pipeline": "5. Pipeline",
}
DEVICES = ["auto", "cpu", "cuda", "mps"]
HELP_URL = "https://github.com/satsynth/satsynth-qgis/blob/main/docs/plugin.md"


@contextmanager
def plain_errors() -> Iterator[None]:
    """Re-raise the runner's errors as plain QgsProcessingException.

    QGIS shows a plain QgsProcessingException as its message; any other exception type (even a
    subclass) is shown as a Python traceback.
    """
    try:
        yield
    except QgsProcessingException as exc:
        if type(exc) is QgsProcessingException:
            raise
        raise QgsProcessingException(str(exc)) from None


class SatSynthAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set ``ALG_ID``, ``DISPLAY``, ``GROUP``, ``ICON`` and ``HELP``."""

    ALG_ID = ""
    DISPLAY = ""
    GROUP = "engine"
    ICON = "satsynth"
    HELP = ""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("SatSynth", text)

    def createInstance(self) -> QgsProcessingAlgorithm:
        return type(self)()

    def name(self) -> str:
        return self.ALG_ID

    def displayName(self) -> str:
        return self.tr(self.DISPLAY)

    def group(self) -> str:
        return self.tr(GROUPS[self.GROUP])

    def groupId(self) -> str:
        return self.GROUP

    def icon(self) -> QIcon:
        return QIcon(icon_path(self.ICON))

    def svgIconPath(self) -> str:
        return icon_path(self.ICON)

    def shortHelpString(self) -> str:
        return self.tr(self.HELP)

    def helpUrl(self) -> str:
        return HELP_URL

    # --- helpers for subclasses -------------------------------------------------------------
    def engine(self, args: list[str], feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """Run one engine command and return its outputs (see :func:`runner.run_engine`)."""
        with plain_errors():
            result = runner.run_engine(args, feedback)
        feedback.pushInfo(f"Engine finished in {runner.format_seconds(result.seconds)}.")
        return result.outputs

    @staticmethod
    def folder_value(value: str) -> str:
        """A folder parameter's value as an absolute path ('' stays '')."""
        return str(Path(value).expanduser().resolve()) if value else ""

    @staticmethod
    def load_on_completion(context: QgsProcessingContext, path: str, name: str, output_name: str,
                           raster: bool, post_processor: Any = None) -> None:
        """Have Processing add ``path`` to the project when the algorithm finishes."""
        hint = QgsProcessingUtils.LayerHint.Raster if raster else QgsProcessingUtils.LayerHint.Vector
        details = QgsProcessingContext.LayerDetails(name, context.project(), output_name, hint)
        if post_processor is not None:
            details.setPostProcessor(post_processor)
        context.addLayerToLoadOnCompletion(path, details)

    @staticmethod
    def add_device_args(args: list[str], device: str) -> None:
        if device and device != "auto":
            args += ["--device", device]
