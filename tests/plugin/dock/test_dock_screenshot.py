"""A screenshot of the dock beside a map canvas with layers loaded (a test artifact, and the
README's figure): real SpaceNet data when ../shared/datasets is present, the test scene else."""

from __future__ import annotations

from pathlib import Path

from conftest import stub_iface
from dock_fixtures import load_scene, wait_until
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QImage

from satsynth_qgis.dock.panel import SatSynthDock

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "tests" / "artifacts"
SPACENET = REPO / ".." / "shared" / "datasets" / "spacenet-samples"


def _layers(project: QgsProject, tmp_path: Path) -> tuple[QgsRasterLayer, QgsVectorLayer, str]:
    image = SPACENET / "sample_geotiff.tif"
    labels = SPACENET / "geotiff_labels.geojson"
    if image.is_file() and labels.is_file():
        raster = QgsRasterLayer(str(image.resolve()), "Atlanta 0.5 m (SpaceNet)")
        vector = QgsVectorLayer(str(labels.resolve()), "building footprints", "ogr")
        project.addMapLayers([raster, vector])
        return raster, vector, "building"
    scene = load_scene(tmp_path, project)
    return scene["image"], scene["polygons"], "landcover"


def test_screenshot_of_the_dock_with_layers_loaded(project, provider, tmp_path):
    raster, vector, field = _layers(project, tmp_path)
    assert raster.isValid() and vector.isValid()
    vector.renderer().symbol().setColor(Qt.transparent)
    vector.renderer().symbol().symbolLayer(0).setStrokeColor(Qt.yellow)
    vector.renderer().symbol().symbolLayer(0).setStrokeWidth(0.5)
    iface = stub_iface()
    window = iface.mainWindow()
    canvas = iface.mapCanvas()
    window.setCentralWidget(canvas)
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([vector, raster])
    canvas.setExtent(raster.extent())
    dock = SatSynthDock(iface, window, project=project)
    window.addDockWidget(Qt.RightDockWidgetArea, dock)
    dock.setMinimumWidth(520)
    # the engine status line is filled by the Check engine algorithm, in the background
    assert wait_until(lambda: not dock.stage_runner.is_running(), timeout=120)
    assert dock.engine_label.text().startswith("Engine: ")
    dock.image_combo.setLayer(raster)
    dock.labels_vector_radio.setChecked(True)
    dock.label_vector_combo.setLayer(vector)
    dock.field_combo.setField(field)
    rows = dock.class_table.rows()
    assert len(rows) >= 2
    if field == "building":  # OSM's "building=yes": the analyst renames the class
        dock.class_table.table.item(1, 1).setText("building")
    # shown, never written to: no stage runs in this test
    dock.output_widget.setFilePath("/home/analyst/SatSynth runs")
    dock.run_name_edit.setText("atlanta buildings")
    dock.log.appendPlainText("Prepare: ready (image, labels, 2 classes, output folder chosen)")
    window.resize(1500, 1150)
    window.show()
    canvas.refresh()
    assert wait_until(lambda: not canvas.isDrawing(), timeout=30)
    wait_until(lambda: False, timeout=0.5)  # let the layout settle

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "dock.png"
    assert window.grab().save(str(out), "PNG")
    img = QImage(str(out))
    assert img.width() >= 1000 and img.height() >= 800
    # the canvas really drew the raster: its pixels are not one flat colour
    sample = {img.pixel(x, y) for x in range(50, 700, 37) for y in range(100, 900, 41)}
    assert len(sample) > 20
    assert dock.buttons["prepare"].isEnabled() and dock.buttons["run_all"].isEnabled()
    dock.shutdown()
    window.close()
