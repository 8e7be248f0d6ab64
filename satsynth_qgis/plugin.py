"""The QGIS plugin object: registers the Processing provider and, with a GUI, the dock panel."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import SatSynthProvider


class SatSynthPlugin:
    """Created by :func:`satsynth_qgis.classFactory`; ``iface`` is None under qgis_process."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: SatSynthProvider | None = None
        self.dock: Any = None

    def initProcessing(self) -> None:
        """Register the provider (QGIS calls this also headless, e.g. from qgis_process)."""
        if self.provider is None:
            self.provider = SatSynthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        if self.iface is not None:
            from .dock.menu import DockMenu  # widgets: only with a GUI

            self.dock = DockMenu(self.iface, self)
            self.dock.initGui()

    def unload(self) -> None:
        if self.dock is not None:
            self.dock.unload()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

