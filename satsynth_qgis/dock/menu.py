"""The dock's entries in QGIS: a toolbar button and Raster menu items that show the panel and open
*Set up engine*; the panel itself is created on first use."""

from __future__ import annotations

from typing import Any

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from ..paths import icon_path

MENU = "&SatSynth"


class DockMenu:
    """Created by the plugin as ``DockMenu(iface, plugin)``; ``initGui()``/``unload()``."""

    def __init__(self, iface: Any, plugin: Any = None) -> None:
        self.iface = iface
        self.plugin = plugin
        self.dock: Any = None
        self.toggle_action: QAction | None = None
        self.setup_action: QAction | None = None

    def initGui(self) -> None:  # noqa: N802 - QGIS naming
        window = self.iface.mainWindow()
        self.toggle_action = QAction(QIcon(icon_path()), "SatSynth panel", window)
        self.toggle_action.setObjectName("satsynthShowDock")
        self.toggle_action.setCheckable(True)
        self.toggle_action.setToolTip("Show the SatSynth panel: prepare chips, train, synthesize "
                                      "and segment from map layers")
        self.toggle_action.toggled.connect(self.set_visible)
        self.setup_action = QAction(QIcon(icon_path("check_engine")), "Set up engine…", window)
        self.setup_action.setObjectName("satsynthSetupEngine")
        self.setup_action.triggered.connect(self.show_setup)
        self.iface.addRasterToolBarIcon(self.toggle_action)
        self.iface.addPluginToRasterMenu(MENU, self.toggle_action)
        self.iface.addPluginToRasterMenu(MENU, self.setup_action)

    def ensure_dock(self) -> Any:
        """The dock widget (created on first use, docked on the right)."""
        if self.dock is None:
            from .panel import SatSynthDock

            self.dock = SatSynthDock(self.iface, self.iface.mainWindow())
            self.dock.visibilityChanged.connect(self._visibility_changed)
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        return self.dock

    def set_visible(self, visible: bool) -> None:
        if visible:
            self.ensure_dock().show()
            self.dock.raise_()
        elif self.dock is not None:
            self.dock.hide()

    def show_setup(self) -> None:
        """Open the panel and its "Set up engine" dialog."""
        self.set_visible(True)
        self.dock.open_setup_dialog()

    def _visibility_changed(self, visible: bool) -> None:
        if self.toggle_action is not None and self.toggle_action.isChecked() != visible:
            self.toggle_action.blockSignals(True)
            self.toggle_action.setChecked(visible)
            self.toggle_action.blockSignals(False)

    def unload(self) -> None:
        for action in (self.toggle_action, self.setup_action):
            if action is not None:
                self.iface.removePluginRasterMenu(MENU, action)
                self.iface.removeRasterToolBarIcon(action)
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        self.toggle_action = self.setup_action = None
