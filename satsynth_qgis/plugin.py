"""The QGIS plugin object: registers the Processing provider and, with a GUI, the dock panel."""

from __future__ import annotations

import importlib
from typing import Any

from qgis.core import QgsApplication

from .provider import SatSynthProvider

#: The dock panel (issue 7) lives in ``satsynth_qgis.dock``; when that package defines
#: ``DockController(iface, plugin)`` with ``initGui()`` and ``unload()``, the plugin creates it.
DOCK_MODULE = f"{__package__}.dock"
DOCK_CLASS = "DockController"


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
        controller = _dock_controller_class()
        if controller is not None and self.iface is not None:
            self.dock = controller(self.iface, self)
            self.dock.initGui()

    def unload(self) -> None:
        if self.dock is not None:
            self.dock.unload()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None


def _dock_controller_class() -> Any:
    """The dock's controller class, or None while the dock package does not provide one."""
    try:
        module = importlib.import_module(DOCK_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == DOCK_MODULE:
            return None
        raise
    return getattr(module, DOCK_CLASS, None)
