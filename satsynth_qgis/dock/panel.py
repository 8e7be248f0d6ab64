"""The SatSynth dock: pick layers, press a stage button, watch progress, get styled layers back.

Every stage button runs the provider's Processing algorithm (``satsynth:<stage>``) through
:class:`~.tasks.StageRunner`, the same code the toolbox runs. The run folder
(``<output folder>/<run name>``) holds each stage's outputs and ``run.json``, the parameters used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsMapLayer,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QTimer, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import runner
from ..algorithms.run_experiment import parse_ratios
from . import params
from .class_table import (
    ClassTableError,
    ClassTableWidget,
    rows_from_field,
    rows_from_raster,
    rows_to_dict,
)
from .presets import DEFAULT_PRESET, PRESETS, StageSettings, preset
from .run_folder import RunFolder
from .tasks import StageRunner

SETTINGS_PREFIX = "SatSynth/dock/"
HELP_URL = "https://github.com/satsynth/satsynth-qgis/blob/main/docs/dock.md#set-up-the-engine"

#: Stage -> button label, in pipeline order.
STAGES = {
    "prepare": "Prepare",
    "train_generator": "Train generator",
    "synthesize": "Synthesize",
    "train_segmenter": "Train segmenter",
    "evaluate": "Evaluate",
    "experiment": "Does synthetic data help?",
    "segment": "Segment",
    "export": "Export ONNX",
    "run_all": "Run all",
}


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
        self.queue: list[str] = []
        self.engine_info: dict[str, Any] = {}
        self.setup_task: Any = None
        self.last_report: str = ""
        self._build()
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

    # ------------------------------------------------------------------ building the widgets
    def _build(self) -> None:
        body = QWidget()
        outer = QVBoxLayout(body)

        # engine status
        engine_row = QHBoxLayout()
        engine_row.addStretch(1)
        self.engine_label = QLabel("Engine: checking…")
        self.engine_label.setObjectName("engineStatus")
        self.engine_label.setWordWrap(True)
        self.engine_label.setOpenExternalLinks(False)
        self.engine_label.linkActivated.connect(self._engine_link)
        self.check_button = QPushButton("Check")
        self.check_button.setToolTip("Run Check engine: version, device and GPU")
        self.setup_button = QPushButton("Set up engine…")
        engine_row.addWidget(self.check_button)
        engine_row.addWidget(self.setup_button)
        outer.addWidget(self.engine_label)
        outer.addLayout(engine_row)

        # inputs
        inputs = QGroupBox("Inputs")
        form = QFormLayout(inputs)
        self.image_combo = QgsMapLayerComboBox()
        self.image_combo.setObjectName("imageLayer")
        self.image_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.image_combo.setAllowEmptyLayer(True)
        self.image_combo.setLayer(None)
        form.addRow("Image", self.image_combo)
        mode_row = QHBoxLayout()
        self.labels_raster_radio = QRadioButton("Raster")
        self.labels_vector_radio = QRadioButton("Vector + field")
        self.labels_vector_radio.setChecked(True)
        self.label_mode_group = QButtonGroup(self)
        self.label_mode_group.addButton(self.labels_raster_radio)
        self.label_mode_group.addButton(self.labels_vector_radio)
        mode_row.addWidget(self.labels_raster_radio)
        mode_row.addWidget(self.labels_vector_radio)
        mode_row.addStretch(1)
        form.addRow("Labels as", mode_row)
        self.label_raster_combo = QgsMapLayerComboBox()
        self.label_raster_combo.setObjectName("labelRaster")
        self.label_raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.label_raster_combo.setAllowEmptyLayer(True)
        self.label_raster_combo.setLayer(None)
        form.addRow("Label raster", self.label_raster_combo)
        self.label_vector_combo = QgsMapLayerComboBox()
        self.label_vector_combo.setObjectName("labelVector")
        self.label_vector_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.label_vector_combo.setAllowEmptyLayer(True)
        self.label_vector_combo.setLayer(None)
        form.addRow("Label polygons", self.label_vector_combo)
        self.field_combo = QgsFieldComboBox()
        self.field_combo.setObjectName("classField")
        form.addRow("Class field", self.field_combo)
        outer.addWidget(inputs)

        # classes
        classes = QGroupBox("Classes")
        cl = QVBoxLayout(classes)
        self.class_table = ClassTableWidget()
        cl.addWidget(self.class_table)
        outer.addWidget(classes)

        # run
        run = QGroupBox("Run")
        rform = QFormLayout(run)
        self.output_widget = QgsFileWidget()
        self.output_widget.setObjectName("outputFolder")
        self.output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.output_widget.setDialogTitle("Output folder for SatSynth runs")
        rform.addRow("Output folder", self.output_widget)
        self.run_name_edit = QLineEdit("satsynth run")
        self.run_name_edit.setObjectName("runName")
        self.run_name_edit.setToolTip("The run's sub-folder and its layer group")
        rform.addRow("Run name", self.run_name_edit)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("preset")
        self.preset_combo.addItems(list(PRESETS))
        rform.addRow("Preset", self.preset_combo)
        self.advanced_box = QgsCollapsibleGroupBox("Advanced")
        self.advanced_box.setObjectName("advanced")
        self.advanced_box.setCollapsed(True)
        self._build_advanced(self.advanced_box)
        rform.addRow(self.advanced_box)
        outer.addWidget(run)

        # stages
        stages = QGroupBox("Stages")
        grid = QGridLayout(stages)
        self.buttons: dict[str, QPushButton] = {}
        for i, stage in enumerate(["prepare", "train_generator", "synthesize", "train_segmenter",
                                   "evaluate", "experiment"]):
            b = QPushButton(STAGES[stage])
            b.setObjectName(f"stage_{stage}")
            self.buttons[stage] = b
            grid.addWidget(b, i // 2, i % 2)
        self.buttons["experiment"].setWhatsThis(
            "Trains a segmenter per synthetic ratio R and seed (Advanced: experiment ratios, "
            "seeds, budget, real fraction) and compares each with real chips only; the report "
            "opens when done. Cancel keeps the finished runs: run it again to resume.")
        seg_box = QGroupBox("Segment")
        sform = QFormLayout(seg_box)
        self.segment_combo = QgsMapLayerComboBox()
        self.segment_combo.setObjectName("segmentLayer")
        self.segment_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.segment_combo.setAllowEmptyLayer(True)
        self.segment_combo.setLayer(None)
        sform.addRow("Raster", self.segment_combo)
        self.extent_combo = QComboBox()
        self.extent_combo.setObjectName("segmentExtent")
        self.extent_combo.addItem("Whole layer", "layer")
        self.extent_combo.addItem("Canvas extent", "canvas")
        self.extent_combo.addItem("AOI layer", "aoi")
        sform.addRow("Area", self.extent_combo)
        self.aoi_combo = QgsMapLayerComboBox()
        self.aoi_combo.setObjectName("aoiLayer")
        self.aoi_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.aoi_combo.setAllowEmptyLayer(True)
        self.aoi_combo.setLayer(None)
        sform.addRow("AOI", self.aoi_combo)
        self.segmenter_widget = QgsFileWidget()
        self.segmenter_widget.setObjectName("segmenterFolder")
        self.segmenter_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.segmenter_widget.lineEdit().setPlaceholderText("the run's segmenter")
        sform.addRow("Model", self.segmenter_widget)
        b = QPushButton(STAGES["segment"])
        b.setObjectName("stage_segment")
        self.buttons["segment"] = b
        sform.addRow(b)
        b = QPushButton(STAGES["export"])
        b.setObjectName("stage_export")
        b.setToolTip("Write the segmenter as an ONNX model beside its folder (SEGMENTER.onnx), "
                     "with the metadata Deepness reads (Export segmenter to ONNX)")
        self.buttons["export"] = b
        sform.addRow(b)
        grid.addWidget(seg_box, 3, 0, 1, 2)
        b = QPushButton(STAGES["run_all"])
        b.setObjectName("stage_run_all")
        b.setToolTip("Prepare, train the generator, synthesize, train the segmenter and segment "
                     "the image, as one algorithm (Run full pipeline)")
        self.buttons["run_all"] = b
        grid.addWidget(b, 4, 0, 1, 2)
        outer.addWidget(stages)

        # progress
        prog = QGroupBox("Progress")
        pl = QVBoxLayout(prog)
        self.stage_label = QLabel("Idle")
        self.stage_label.setObjectName("stageText")
        self.stage_label.setWordWrap(True)
        pl.addWidget(self.stage_label)
        row = QHBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        pl.addLayout(row)
        self.time_label = QLabel("")
        self.time_label.setObjectName("timeText")
        pl.addWidget(self.time_label)
        self.log = QPlainTextEdit()
        self.log.setObjectName("log")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setMinimumHeight(120)
        pl.addWidget(self.log)
        outer.addWidget(prog)
        outer.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    def _build_advanced(self, box: QgsCollapsibleGroupBox) -> None:
        form = QFormLayout(box)
        self.adv: dict[str, QWidget] = {}

        def spin(name: str, lo: int, hi: int, step: int = 1, tip: str = "") -> None:
            w = QSpinBox()
            w.setRange(lo, hi)
            w.setSingleStep(step)
            w.setToolTip(tip)
            self.adv[name] = w

        def dspin(name: str, lo: float, hi: float, step: float, tip: str = "") -> None:
            w = QDoubleSpinBox()
            w.setRange(lo, hi)
            w.setSingleStep(step)
            w.setDecimals(2)
            w.setToolTip(tip)
            self.adv[name] = w

        def combo(name: str, items: list[str], tip: str = "") -> None:
            w = QComboBox()
            w.addItems(items)
            w.setToolTip(tip)
            self.adv[name] = w

        spin("chip_size", 32, 1024, 32, "Chip size in pixels (a multiple of 32)")
        spin("stride", 8, 1024, 8, "Distance between chips; smaller than the size overlaps them")
        dspin("val_fraction", 0.0, 0.9, 0.05, "Share of chips kept for validation")
        combo("recipe", list(params.RECIPES),
              "Generator recipe: default, or paper (SatSynth as published: base UNet, 128 px "
              "chips, epsilon, linear schedule, unconditional, DDPM sampling; a GPU)")
        combo("generator_size", list(params.GENERATOR_SIZES), "Size of the diffusion model")
        spin("generator_steps", 1, 10_000_000, 100, "Generator training steps")
        spin("batch_size", 1, 1024, 1, "Chips per training step")
        spin("synth_count", 1, 1_000_000, 16, "Synthetic image-mask pairs to sample")
        combo("sampler", list(params.SAMPLERS), "Diffusion sampler")
        spin("sampler_steps", 1, 1000, 5, "Denoising steps per sample")
        upsampler = QgsFileWidget()
        upsampler.setStorageMode(QgsFileWidget.GetDirectory)
        upsampler.setToolTip("Synthesize: an upsampler folder (Train upsampler in the "
                             "toolbox) for the super-resolution cascade; empty: none")
        self.adv["upsampler"] = upsampler
        combo("arch", list(params.ARCHITECTURES), "Segmentation architecture")
        combo("encoder", list(params.ENCODERS), "Encoder backbone")
        weights = QgsFileWidget()
        weights.setFilter("Weights (*.safetensors *.pth *.pt)")
        weights.setToolTip("A local weights file for the encoder (e.g. ImageNet weights); "
                           "empty: random weights. Nothing is downloaded.")
        self.adv["encoder_weights"] = weights
        spin("epochs", 1, 10_000, 1, "Segmenter training epochs")
        dspin("synthetic_ratio", 0.0, 10.0, 0.25,
              "Synthetic pairs per real pair when training the segmenter (R in the paper)")
        combo("mixed_precision", list(params.MIXED_PRECISION),
              "Mixed precision for training on a CUDA GPU (ignored on a CPU)")
        ratios = QLineEdit()
        ratios.setToolTip("Experiment: synthetic pairs per real pair R to compare, comma "
                          "separated (0, real only, is always run)")
        self.adv["experiment_ratios"] = ratios
        spin("experiment_seeds", 1, 100, 1, "Experiment: runs per ratio (3+ give an interval)")
        combo("experiment_budget", list(params.BUDGETS),
              "Experiment: steps (the same compute for every R), epochs, or converge")
        dspin("real_fraction", 0.01, 1.0, 0.05,
              "Experiment: share of the real training chips used (the low-data setting)")
        combo("device", list(params.DEVICES), "Compute device")
        spin("tile", 64, 8192, 64, "Tile size when segmenting")
        spin("overlap", 0, 1024, 8, "Tile overlap when segmenting")
        spin("seed", 0, 2**31 - 1, 1, "Random seed")
        labels = {"chip_size": "Chip size", "stride": "Stride", "val_fraction": "Validation share",
                  "recipe": "Generator recipe",
                  "generator_size": "Generator size", "generator_steps": "Generator steps",
                  "batch_size": "Batch size", "synth_count": "Synthetic pairs",
                  "sampler": "Sampler", "sampler_steps": "Sampler steps", "upsampler": "Upsampler",
                  "arch": "Architecture", "encoder": "Encoder",
                  "encoder_weights": "Encoder weights", "epochs": "Epochs",
                  "synthetic_ratio": "Synthetic ratio", "mixed_precision": "Mixed precision",
                  "experiment_ratios": "Experiment ratios", "experiment_seeds": "Experiment seeds",
                  "experiment_budget": "Experiment budget", "real_fraction": "Real fraction",
                  "device": "Device",
                  "tile": "Tile", "overlap": "Overlap", "seed": "Seed"}
        for name, w in self.adv.items():
            w.setObjectName(f"adv_{name}")
            form.addRow(labels[name], w)
        # the engine takes strides between 1 and the chip size, overlaps below the tile size
        self.adv["chip_size"].valueChanged.connect(self.adv["stride"].setMaximum)
        self.adv["tile"].valueChanged.connect(lambda v: self.adv["overlap"].setMaximum(v // 2))
        self.adv["experiment_ratios"].textChanged.connect(lambda _t: self.update_state())

    # ------------------------------------------------------------------ signals
    def _connect(self) -> None:
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
        values: dict[str, Any] = {}
        for name, w in self.adv.items():
            if isinstance(w, QComboBox):
                values[name] = w.currentText()
            elif isinstance(w, QLineEdit):
                values[name] = w.text().strip()
            elif isinstance(w, QgsFileWidget):
                values[name] = w.filePath().strip()
            else:
                values[name] = w.value()
        return StageSettings.from_dict(values)

    def set_stage_settings(self, s: StageSettings) -> None:
        for name, value in s.to_dict().items():
            w = self.adv[name]
            if isinstance(w, QComboBox):
                idx = w.findText(str(value))
                if idx < 0:
                    w.addItem(str(value))
                    idx = w.findText(str(value))
                w.setCurrentIndex(idx)
            elif isinstance(w, QLineEdit):
                w.setText(str(value))
            elif isinstance(w, QgsFileWidget):
                w.setFilePath(str(value))
            else:
                w.setValue(value)

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
        has_image = isinstance(self.image_combo.currentLayer(), QgsRasterLayer)
        has_labels = self.label_source_ready()
        classes_ok = self.class_table.is_valid()
        missing_base = []
        if not has_image:
            missing_base.append("an image layer")
        if not has_labels:
            missing_base.append("labels (a raster, or polygons and their class field)")
        if not classes_ok:
            missing_base.append("a valid class table")
        if rf is None:
            missing_base.append("an output folder and run name")
        base = ("needs " + ", ".join(missing_base)) if missing_base else ""
        no_run = "needs an output folder and run name"
        seg = self.segmenter_path()
        seg_ok = seg is not None and (seg / "config.json").is_file()
        ready = {
            "prepare": base,
            "run_all": base,
            "train_generator": no_run if rf is None else
            ("" if rf.has_dataset() else "needs the prepared chips (run Prepare)"),
            "synthesize": no_run if rf is None else
            ("" if rf.has_generator() else "needs a trained generator (run Train generator)"),
            "train_segmenter": no_run if rf is None else
            ("" if rf.has_dataset() else "needs the prepared chips (run Prepare)"),
            "experiment": self._experiment_ready(rf),
        }
        ev = []
        if not seg_ok:
            ev.append("a trained segmenter (run Train segmenter)")
        if rf is None:
            ev.append("an output folder and run name")
        elif self.labels_raster_radio.isChecked():
            if not has_image or not has_labels:
                ev.append("an image layer and its label raster")
        elif not rf.has_dataset():
            ev.append("the prepared chips, whose validation chips are the reference "
                      "(run Prepare), or a label raster")
        ready["evaluate"] = ("needs " + ", ".join(ev)) if ev else ""
        sg = []
        if not seg_ok:
            sg.append("a trained segmenter (run Train segmenter, or choose a model folder)")
        if not isinstance(self.segment_combo.currentLayer(), QgsRasterLayer):
            sg.append("a raster to segment")
        mode = self.extent_combo.currentData()
        if mode == "aoi" and not isinstance(self.aoi_combo.currentLayer(), QgsVectorLayer):
            sg.append("an AOI polygon layer")
        if mode == "canvas" and (self.iface is None or self.iface.mapCanvas() is None):
            sg.append("a map canvas")
        if rf is None and not self.segmenter_widget.filePath().strip():
            sg.append("an output folder and run name")
        ready["segment"] = ("needs " + ", ".join(sg)) if sg else ""
        ready["export"] = "" if seg_ok else ("needs a trained segmenter (run Train segmenter, "
                                             "or choose a model folder)")
        return ready

    def _experiment_ready(self, rf: RunFolder | None) -> str:
        """Why the experiment cannot run ('' when it can)."""
        if rf is None:
            return "needs an output folder and run name"
        if not rf.has_dataset():
            return "needs the prepared chips (run Prepare)"
        text = self.stage_settings().experiment_ratios
        ratios = parse_ratios(text)
        if ratios is None:
            return f"needs experiment ratios like 0,1,2 (Advanced), not '{text}'"
        if max(ratios) > 0 and not rf.has_generator():
            return "needs a trained generator for ratios above 0 (run Train generator)"
        return ""

    def update_state(self, *_args: Any) -> None:
        """Enable each stage button only when its inputs exist and nothing runs."""
        running = self.stage_runner.is_running() or bool(self.queue)
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
        self.queue.clear()
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
                rf.record_stage(stage, algorithm_id, getattr(self, "_current_params", {}), ok,
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
                self.last_report = report
                self._log("info", f"{'Evaluation' if stage == 'evaluate' else 'Experiment'} "
                                  f"report: {report}")
                if QgsSettings().value(SETTINGS_PREFIX + "open_reports", True, type=bool):
                    QDesktopServices.openUrl(QUrl.fromLocalFile(report))

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
        s = QgsSettings()
        s.setValue(SETTINGS_PREFIX + "output_folder", self.output_widget.filePath())
        s.setValue(SETTINGS_PREFIX + "run_name", self.run_name_edit.text())
        s.setValue(SETTINGS_PREFIX + "preset", self.preset_combo.currentText())
        s.setValue(SETTINGS_PREFIX + "advanced", json.dumps(self.stage_settings().to_dict()))
        s.setValue(SETTINGS_PREFIX + "label_mode",
                   "raster" if self.labels_raster_radio.isChecked() else "vector")
        s.setValue(SETTINGS_PREFIX + "extent_mode", self.extent_combo.currentData())

    def _restore_settings(self) -> None:
        s = QgsSettings()
        self.output_widget.setFilePath(s.value(SETTINGS_PREFIX + "output_folder", "") or "")
        self.run_name_edit.setText(s.value(SETTINGS_PREFIX + "run_name", "satsynth run")
                                   or "satsynth run")
        name = s.value(SETTINGS_PREFIX + "preset", DEFAULT_PRESET) or DEFAULT_PRESET
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentText(name if name in PRESETS else DEFAULT_PRESET)
        self.preset_combo.blockSignals(False)
        saved = s.value(SETTINGS_PREFIX + "advanced", "")
        try:
            settings = StageSettings.from_dict(json.loads(saved)) if saved else preset(name)
        except ValueError:
            settings = preset(name)
        self.set_stage_settings(settings)
        if s.value(SETTINGS_PREFIX + "label_mode", "vector") == "raster":
            self.labels_raster_radio.setChecked(True)
        self._label_mode_changed()
        idx = self.extent_combo.findData(s.value(SETTINGS_PREFIX + "extent_mode", "layer"))
        self.extent_combo.setCurrentIndex(max(0, idx))

    def shutdown(self) -> None:
        """Stop whatever runs and remember the settings (plugin unload)."""
        self._save_settings()
        self.cancel()
        self._timer.stop()
