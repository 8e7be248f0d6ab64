"""Install test: the zip unpacked into a fresh QGIS profile loads in a fresh QGIS (offscreen), as
Plugins > Install from ZIP would leave it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from dock_fixtures import build_plugin_zip

PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"

# Runs in a separate QGIS process: a QgsApplication can exist once per process and its profile
# is fixed when it starts.
SCRIPT = r"""
import json, os, sys
profile = sys.argv[1]
from qgis.core import QgsApplication, QgsSettings
app = QgsApplication([b"install-test"], True, profile)
app.initQgis()
plugins_dir = os.path.join(QgsApplication.qgisSettingsDirPath(), "python", "plugins")
sys.path.insert(0, plugins_dir)  # what QGIS does for the profile's plugin folder
sys.path.append(sys.argv[2])     # QGIS's bundled Processing plugin
from processing.core.Processing import Processing
Processing.initialize()
import qgis.utils
from unittest import mock
from qgis.gui import QgisInterface, QgsMapCanvas
from qgis.PyQt.QtWidgets import QMainWindow
window = QMainWindow(); canvas = QgsMapCanvas(window)
iface = mock.Mock(spec=QgisInterface)
iface.mainWindow.return_value = window
iface.mapCanvas.return_value = canvas
qgis.utils.iface = iface
qgis.utils.plugin_paths = [plugins_dir]
QgsSettings().setValue("PythonPlugins/satsynth_qgis", True)  # enabled in this profile
qgis.utils.updateAvailablePlugins()
out = {"available": "satsynth_qgis" in qgis.utils.available_plugins,
       "name": qgis.utils.pluginMetadata("satsynth_qgis", "name"),
       "loaded": qgis.utils.loadPlugin("satsynth_qgis")}
out["started"] = qgis.utils.startPlugin("satsynth_qgis")
import satsynth_qgis
out["module_file"] = satsynth_qgis.__file__
reg = QgsApplication.processingRegistry()
prov = reg.providerById("satsynth")
out["provider"] = prov.name() if prov else None
out["algorithms"] = sorted(a.id() for a in prov.algorithms()) if prov else []
plugin = qgis.utils.plugins["satsynth_qgis"]
dock = plugin.dock
out["dock_menu"] = type(dock).__name__ if dock is not None else None
if dock is not None:
    dock.toggle_action.setChecked(True)
    out["dock_widget"] = type(dock.dock).__name__
    out["dock_module"] = sys.modules[type(dock.dock).__module__].__file__
out["unloaded"] = qgis.utils.unloadPlugin("satsynth_qgis")
out["provider_after_unload"] = reg.providerById("satsynth") is not None
print("RESULT " + json.dumps(out))
app.exitQgis()
"""


def test_zip_installs_into_a_fresh_profile_and_loads(tmp_path_factory, tmp_path):
    plugin_zip = build_plugin_zip(tmp_path_factory.mktemp("dist"))
    profile = tmp_path / "QGIS profiles" / "default"  # a space, as on many Windows machines
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "QGIS_CUSTOM_CONFIG_PATH")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(profile), PROCESSING_PLUGINS],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["available"] and out["name"] == "SatSynth"
    assert out["loaded"] and out["started"]
    # the installed copy ran, not the checkout
    assert Path(out["module_file"]).resolve().is_relative_to(plugins.resolve())
    assert Path(out["dock_module"]).resolve().is_relative_to(plugins.resolve())
    assert out["provider"] == "SatSynth"
    from satsynth_qgis.algorithms import ALGORITHMS

    assert out["algorithms"] == sorted(f"satsynth:{cls.INFO.alg_id}" for cls in ALGORITHMS)
    assert out["dock_menu"] == "DockMenu" and out["dock_widget"] == "SatSynthDock"
    assert out["unloaded"] and not out["provider_after_unload"]
