"""The SatSynth dock: pick layers, press a stage button, watch progress, get styled layers back.

Every stage button runs the provider's Processing algorithm (``satsynth:<stage>``) through
:class:`~.tasks.StageRunner`, the same code the toolbox runs. The run folder
(``<output folder>/<run name>``) holds each stage's outputs and ``run.json``, the parameters used.

This module wires the dock together: its widgets come from :mod:`.widgets`, which stage may run
from :mod:`.readiness`, what it remembers from :mod:`.settings`; here the widgets are connected to
running stages and checking the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import QgsMapLayer, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import QTimer, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QDockWidget, QWidget

from .. import runner
from ..algorithms.run_experiment import parse_ratios
from ..folders import has_marker
from . import params
from .class_table import ClassTableError, rows_from_field, rows_from_raster, rows_to_dict
from .presets import StageSettings, preset
from .readiness import STAGES, DockFacts, stage_readiness
from .run_folder import RunFolder
from .settings import DockSettings, load_settings, open_reports, save_settings
from .tasks import StageRunner
from .widgets import build_panel, read_advanced, write_advanced

HELP_URL = "https://github.com/satsynth/satsynth-qgis/blob/main/docs/dock.md#set-up-the-engine"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return runner.format_seconds(seconds)


class SatSynthDock(QDockWidget):
    """The panel. ``iface`` may be None (tests); the canvas extent option then is unavailable."""

    def __init__(self, iface: Any = None, parent: QWidget | None = None,
                 project: QgsProject | None = None, check_engine: bool = True) -> None:
        super().__init__("SatSynth", parent)
        self.setObjectName("SatSynthDock")
        self.iface = iface
        self.project = project or QgsProject.instance()
        self.stage_runner = StageRunner(self)
        self.current_stage = ""
        self._current_params: dict[str, Any] = {}
        self.engine_info: dict[str, Any] = {}
        self.setup_task: Any = None
        build_panel(self)
        self._connect()
        self._restore_settings()
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._tick)
        self.update_state()
        if check_engine:
            QTimer.singleShot(0, self.refresh_engine_status)
        else:
            self.engine_label.setText("Engine: not checked yet (press Check)")

    # ------------------------------------------------------------------ signals
    def _connect(self) -> None:
        self.engine_label.linkActivated.connect(self._engine_link)
        self.adv["experiment_ratios"].textChanged.connect(lambda _t: self.update_state())
        self.image_combo.layerChanged.connect(self._image_changed)
        self.labels_raster_radio.toggled.connect(self._label_mode_changed)
        self.label_raster_combo.layerChanged.connect(self._label_layer_changed)
        self.label_vector_combo.layerChanged.connect(self._vector_changed)
        self.field_combo.fieldChanged.connect(self._field_changed)
        self.class_table.fillRequested.connect(self.fill_classes)
        self.class_table.changed.connect(self.update_state)
        self.output_widget.fileChanged.connect(self.update_state)
        self.run_name_edit.textChanged.connect(self.update_state)
        self.preset_combo.currentTextChanged.connect(self.apply_preset)
        self.segment_combo.layerChanged.connect(self.update_state)
        self.extent_combo.currentIndexChanged.connect(self.update_state)
        self.aoi_combo.layerChanged.connect(self.update_state)
        self.segmenter_widget.fileChanged.connect(self.update_state)
        for stage, button in self.buttons.items():
            button.clicked.connect(lambda _checked=False, s=stage: self.run_stage(s))
        self.cancel_button.clicked.connect(self.cancel)
        self.check_button.clicked.connect(self.refresh_engine_status)
        self.setup_button.clicked.connect(self.open_setup_dialog)
        self.stage_runner.progressChanged.connect(self._progress)
        self.stage_runner.message.connect(self._message)
        self.stage_runner.finished.connect(self._finished)
        self.project.layersAdded.connect(lambda _layers: self.update_state())
        self.project.layersRemoved.connect(lambda _ids: self.update_state())

    def _image_changed(self, layer: QgsMapLayer | None) -> None:
        if layer is not None and self.segment_combo.currentLayer() is None:
            self.segment_combo.setLayer(layer)
        self.update_state()

    def _label_mode_changed(self, _checked: bool = False) -> None:
        raster = self.labels_raster_radio.isChecked()
        self.label_raster_combo.setEnabled(raster)
        self.label_vector_combo.setEnabled(not raster)
        self.field_combo.setEnabled(not raster)
        self._label_layer_changed()

    def _vector_changed(self, layer: QgsMapLayer | None) -> None:
        self.field_combo.setLayer(layer)
        self._label_layer_changed()

    def _field_changed(self, _name: str) -> None:
        self._label_layer_changed()

    def _label_layer_changed(self, _layer: Any = None) -> None:
        """New labels: refill the class table from them (the user edits it afterwards)."""
        if self.label_source_ready():
            self.fill_classes(quiet=True)
        self.update_state()

    # ------------------------------------------------------------------ state
    def label_source_ready(self) -> bool:
        if self.labels_raster_radio.isChecked():
            return isinstance(self.label_raster_combo.currentLayer(), QgsRasterLayer)
        return (isinstance(self.label_vector_combo.currentLayer(), QgsVectorLayer)
                and bool(self.field_combo.currentField()))

    def fill_classes(self, quiet: bool = False) -> bool:
        """Fill the class table from the label raster's values or the class field's values."""
        try:
            if self.labels_raster_radio.isChecked():
                layer = self.label_raster_combo.currentLayer()
                if layer is None:
                    raise ClassTableError("choose a label raster first")
                rows = rows_from_raster(layer)
            else:
                layer = self.label_vector_combo.currentLayer()
                field = self.field_combo.currentField()
                if layer is None or not field:
                    raise ClassTableError("choose a label layer and its class field first")
                rows = rows_from_field(layer, field)
        except ClassTableError as exc:
            if not quiet:
                self._log("error", str(exc))
            self.class_table.set_rows([])
            return False
        self.class_table.set_rows(rows)
        return True

    def run_folder(self) -> RunFolder | None:
        folder = self.output_widget.filePath().strip()
        name = self.run_name_edit.text().strip()
        if not folder or not name:
            return None
        return RunFolder.of(folder, name)

    def stage_settings(self) -> StageSettings:
        """The Advanced section's values."""
        return read_advanced(self.adv)

    def set_stage_settings(self, s: StageSettings) -> None:
        """Show ``s`` in the Advanced section."""
        write_advanced(self.adv, s)

    def apply_preset(self, name: str) -> None:
        self.set_stage_settings(preset(name))

    def segmenter_path(self) -> Path | None:
        chosen = self.segmenter_widget.filePath().strip()
        if chosen:
            return Path(chosen)
        rf = self.run_folder()
        return rf.segmenter if rf is not None else None

    def stage_ready(self) -> dict[str, str]:
        """Stage -> '' when it can run, else what is missing (shown as the button's tooltip)."""
        rf = self.run_folder()
        seg = self.segmenter_path()
        seg_ok = seg is not None and has_marker(seg, "segmenter")
        ratios = self.stage_settings().experiment_ratios
        return stage_readiness(DockFacts(
            has_image=isinstance(self.image_combo.currentLayer(), QgsRasterLayer),
            has_labels=self.label_source_ready(),
            labels_as_raster=self.labels_raster_radio.isChecked(),
            classes_valid=self.class_table.is_valid(),
            has_run=rf is not None,
            has_dataset=rf is not None and rf.has("dataset"),
            has_generator=rf is not None and rf.has("generator"),
            segmenter_ready=seg_ok,
            segmenter_chosen=bool(self.segmenter_widget.filePath().strip()),
            has_segment_raster=isinstance(self.segment_combo.currentLayer(), QgsRasterLayer),
            extent_mode=self.extent_combo.currentData(),
            has_aoi=isinstance(self.aoi_combo.currentLayer(), QgsVectorLayer),
            has_canvas=self.iface is not None and self.iface.mapCanvas() is not None,
            experiment_ratios_text=ratios,
            experiment_ratios=parse_ratios(ratios),
        ))

    def update_state(self, *_args: Any) -> None:
        """Enable each stage button only when its inputs exist and nothing runs."""
        running = self.stage_runner.is_running()
        ready = self.stage_ready()
        for stage, button in self.buttons.items():
            why = ready.get(stage, "")
            button.setEnabled(not running and not why)
            button.setToolTip(why or f"Run {STAGES[stage]}")
        self.aoi_combo.setEnabled(self.extent_combo.currentData() == "aoi")
        self.cancel_button.setEnabled(running)
        for w in (self.check_button, self.setup_button):
            w.setEnabled(not running)

    # ------------------------------------------------------------------ running
    def inputs(self) -> params.DockInputs:
        """A snapshot of what the user chose."""
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        return params.DockInputs(
            image=self.image_combo.currentLayer(),
            label_mode="raster" if self.labels_raster_radio.isChecked() else "vector",
            label_raster=self.label_raster_combo.currentLayer(),
            label_vector=self.label_vector_combo.currentLayer(),
            class_field=self.field_combo.currentField(),
            run=self.run_folder(),
            settings=self.stage_settings(),
            segment_layer=self.segment_combo.currentLayer(),
            extent_mode=self.extent_combo.currentData(),
            canvas_extent=canvas.extent() if canvas is not None else None,
            canvas_crs=canvas.mapSettings().destinationCrs() if canvas is not None else None,
            aoi=self.aoi_combo.currentLayer(),
            segmenter=self.segmenter_path(),
            project=self.project,
        )

    def run_stage(self, stage: str) -> str:
        """Start a stage (returns '' or why it could not start; the reason is also logged)."""
        why = self.stage_ready().get(stage, "unknown stage")
        if why:
            self._log("error", f"{STAGES.get(stage, stage)}: {why}")
            return why
        inputs = self.inputs()
        if stage in ("prepare", "run_all") and inputs.run is not None:
            inputs.run.root.mkdir(parents=True, exist_ok=True)
            self.class_table.export_json(inputs.run.classes)
        algorithm_id, parameters = params.build(stage, inputs)
        self.current_stage = stage
        self._current_params = parameters
        self.progress_bar.setValue(0)
        self.stage_label.setText(f"{STAGES[stage]}: starting…")
        self._log("info", f"=== {STAGES[stage]} ({algorithm_id})")
        group = inputs.run.root.name if inputs.run is not None else "SatSynth"
        problem = self.stage_runner.start(algorithm_id, parameters, group, self.project)
        if problem:
            self.current_stage = ""
            self._log("error", f"{STAGES[stage]}: {problem}")
            self.stage_label.setText(f"{STAGES[stage]}: not started: {problem}")
            self.update_state()
            return problem
        self._save_settings()
        self._timer.start()
        self.update_state()
        return ""

    def cancel(self) -> None:
        """Stop the running stage (the engine process is terminated)."""
        if self.stage_runner.is_running():
            self._log("warning", "Cancelling…")
            self.stage_label.setText("Cancelling…")
            self.stage_runner.cancel()
        if self.setup_task is not None:
            self.setup_task.cancel()

    def _progress(self, fraction: float) -> None:
        self.progress_bar.setValue(int(round(1000 * fraction)))
        self._tick()

    def _tick(self) -> None:
        if not self.stage_runner.is_running():
            return
        eta = self.stage_runner.eta()
        self.time_label.setText(f"Elapsed {_fmt_seconds(self.stage_runner.elapsed())}"
                                + (f" · about {_fmt_seconds(eta)} left" if eta else ""))

    def _message(self, level: str, text: str) -> None:
        if level == "stage":
            self.stage_label.setText(f"{STAGES.get(self.current_stage, '')}: {text}")
        self._log(level, text)

    def _log(self, level: str, text: str) -> None:
        prefix = {"error": "ERROR: ", "warning": "Warning: ", "debug": "  ", "console": "  ",
                  "command": "$ "}.get(level, "")
        self.log.appendPlainText(prefix + text)

    def _finished(self, ok: bool, algorithm_id: str, results: dict, error: str,
                  layer_ids: list) -> None:
        stage = self.current_stage
        self.current_stage = ""
        self._timer.stop()
        if stage == "check":
            self._engine_checked(ok, results, error)
            self.update_state()
            return
        rf = self.run_folder()
        if stage and rf is not None:
            try:
                rf.record_stage(stage, algorithm_id, self._current_params, ok,
                                results, extra={"preset": self.preset_combo.currentText(),
                                                "classes": rows_to_dict(self.class_table.rows())})
            except OSError as exc:
                self._log("warning", f"could not write {rf.record}: {exc}")
        label = STAGES.get(stage, stage)
        if ok:
            self.progress_bar.setValue(1000)
            self.stage_label.setText(f"{label}: done in "
                                     f"{_fmt_seconds(self.stage_runner.last_seconds)}")
            self._log("info", f"{label} finished; {len(layer_ids)} layer(s) added to the "
                              f"group '{self.stage_runner.group_name}'")
            if error:
                self._log("warning", error)
            self._after_success(stage, results)
        else:
            self.stage_label.setText(f"{label}: {error}")
            self._log("error" if error != "cancelled" else "warning", f"{label}: {error}")
        self.update_state()

    def _engine_checked(self, ok: bool, results: dict, error: str) -> None:
        if not ok:
            self._log("error", f"Check engine: {error}")
            self.engine_info = {}
            self.engine_label.setText(
                f"Engine: <b>not working</b> ({error}). <a href='setup'>Set up engine</a> · "
                f"<a href='{HELP_URL}'>help</a>")
            return
        self.engine_info = dict(results)
        device = str(results.get("DEVICE", "?")).upper()
        gpu = results.get("GPU") or ""
        self.engine_label.setText(
            f"Engine: found · SatSynth {results.get('VERSION', '?')} · torch "
            f"{results.get('TORCH', '?')} · {device}" + (f" ({gpu})" if gpu else ""))
        self.engine_label.setToolTip(str(results.get("ENGINE", "")))

    def _after_success(self, stage: str, results: dict) -> None:
        if stage in ("evaluate", "experiment"):
            report = params.report_path(results)
            if report:
                self._log("info", f"{'Evaluation' if stage == 'evaluate' else 'Experiment'} "
                                  f"report: {report}")
                if open_reports():
                    QDesktopServices.openUrl(QUrl.fromLocalFile(report))
            if stage == "experiment":  # the outcome in the engine's words (cannot tell...)
                for line in params.experiment_outcome(results):
                    self._log("info", f"Does synthetic data help? {line}")

    # ------------------------------------------------------------------ engine
    def refresh_engine_status(self) -> None:
        """Check the engine with the provider's Check engine algorithm (in the background)."""
        if self.stage_runner.is_running():
            return
        try:
            engine = runner.find_engine()
        except runner.EngineNotFound:
            self._show_engine_missing()
            return
        self.engine_label.setText(f"Engine: found ({engine.source}); checking…")
        self.current_stage = "check"
        problem = self.stage_runner.start("satsynth:check_engine", {}, "SatSynth", self.project)
        if problem:
            self.current_stage = ""
            self.engine_label.setText(f"Engine: {problem}")
        self.update_state()

    def _show_engine_missing(self) -> None:
        self.engine_info = {}
        self.engine_label.setText(
            "Engine: <b>not found</b>. <a href='setup'>Set up engine</a> · "
            f"<a href='{HELP_URL}'>help</a>")

    def _engine_link(self, link: str) -> None:
        if link == "setup":
            self.open_setup_dialog()
        else:
            QDesktopServices.openUrl(QUrl(link))

    def open_setup_dialog(self) -> None:
        from .setup_dialog import SetupEngineDialog

        dialog = SetupEngineDialog(self)
        dialog.exec_()

    # ------------------------------------------------------------------ settings
    def _save_settings(self) -> None:
        save_settings(DockSettings(
            output_folder=self.output_widget.filePath(),
            run_name=self.run_name_edit.text(),
            preset=self.preset_combo.currentText(),
            advanced=self.stage_settings(),
            label_mode="raster" if self.labels_raster_radio.isChecked() else "vector",
            extent_mode=self.extent_combo.currentData(),
        ))

    def _restore_settings(self) -> None:
        s = load_settings()
        self.output_widget.setFilePath(s.output_folder)
        self.run_name_edit.setText(s.run_name)
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentText(s.preset)
        self.preset_combo.blockSignals(False)
        self.set_stage_settings(s.advanced)
        if s.label_mode == "raster":
            self.labels_raster_radio.setChecked(True)
        self._label_mode_changed()
        self.extent_combo.setCurrentIndex(max(0, self.extent_combo.findData(s.extent_mode)))

    def shutdown(self) -> None:
        """Stop whatever runs and remember the settings (plugin unload)."""
        self._save_settings()
        self.cancel()
        self._timer.stop()
