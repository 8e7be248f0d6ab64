"""The SatSynth Processing provider (id ``satsynth``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import runner
from .algorithms import ALGORITHMS
from .paths import icon_path, plugin_version


class SatSynthProvider(QgsProcessingProvider):
    """Adds every SatSynth algorithm and the 'Engine Python' setting to Processing."""

    def load(self) -> bool:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # Processing's Python plugin is absent: the setting stays in QgsSettings
            ProcessingConfig = None
        if ProcessingConfig is not None:
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(Setting(
                self.name(), runner.SETTING_NAME,
                self.tr("Engine Python (a Python with the satsynth engine installed, a satsynth "
                        "executable, or the engine's virtual environment folder)"),
                "", valuetype=Setting.FILE))
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        if runner.SETTING_NAME in ProcessingConfig.settings:
            ProcessingConfig.removeSetting(runner.SETTING_NAME)

    def loadAlgorithms(self) -> None:
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())

    def id(self) -> str:
        return "satsynth"

    def name(self) -> str:
        return "SatSynth"

    def longName(self) -> str:
        return f"SatSynth {plugin_version()}"

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def svgIconPath(self) -> str:
        return icon_path()

    def helpId(self) -> str:
        return "satsynth"

    # The engine writes GeoTIFF rasters and GeoPackage vectors.
    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:
        return "tif"

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        return "gpkg"
