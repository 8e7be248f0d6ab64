"""The dock's widgets: what the panel shows and where, with no behaviour of its own.

:func:`build_panel` creates every widget as an attribute of the dock (engine status, inputs,
classes, run settings with the Advanced section, stage buttons, progress and log);
:func:`read_advanced` and :func:`write_advanced` move :class:`~.presets.StageSettings` in and out of
the Advanced section.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsCollapsibleGroupBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
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

from . import params
from .class_table import ClassTableWidget
from .presets import PRESETS, StageSettings
from .readiness import STAGES

RASTER = QgsMapLayerProxyModel.RasterLayer
POLYGON = QgsMapLayerProxyModel.PolygonLayer


def build_panel(dock: QDockWidget) -> None:
    """Create the panel's widgets as attributes of ``dock`` (as Qt Designer's ``setupUi`` does)
    and lay them out; the panel connects them to what they do."""
    body = QWidget()
    outer = QVBoxLayout(body)
    _add_engine_status(dock, outer)
    outer.addWidget(_inputs_box(dock))
    classes = QGroupBox("Classes")
    dock.class_table = ClassTableWidget()
    QVBoxLayout(classes).addWidget(dock.class_table)
    outer.addWidget(classes)
    outer.addWidget(_run_box(dock))
    outer.addWidget(_stages_box(dock))
    outer.addWidget(_progress_box(dock))
    outer.addStretch(1)

    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(body)
    dock.setWidget(scroll)


def _add_engine_status(dock: QDockWidget, outer: QVBoxLayout) -> None:
    """The engine's status line, with Check and Set up engine."""
    engine_row = QHBoxLayout()
    engine_row.addStretch(1)
    dock.engine_label = _label("engineStatus", "Engine: checking…")
    dock.engine_label.setOpenExternalLinks(False)
    dock.check_button = QPushButton("Check")
    dock.check_button.setToolTip("Run Check engine: version, device and GPU")
    dock.setup_button = QPushButton("Set up engine…")
    engine_row.addWidget(dock.check_button)
    engine_row.addWidget(dock.setup_button)
    outer.addWidget(dock.engine_label)
    outer.addLayout(engine_row)


def _inputs_box(dock: QDockWidget) -> QGroupBox:
    """Inputs: the image, and the labels as a raster or as polygons with a class field."""
    inputs = QGroupBox("Inputs")
    form = QFormLayout(inputs)
    dock.image_combo = _layer_combo("imageLayer", RASTER)
    form.addRow("Image", dock.image_combo)
    mode_row = QHBoxLayout()
    dock.labels_raster_radio = QRadioButton("Raster")
    dock.labels_vector_radio = QRadioButton("Vector + field")
    dock.labels_vector_radio.setChecked(True)
    dock.label_mode_group = QButtonGroup(dock)
    for radio in (dock.labels_raster_radio, dock.labels_vector_radio):
        dock.label_mode_group.addButton(radio)
        mode_row.addWidget(radio)
    mode_row.addStretch(1)
    form.addRow("Labels as", mode_row)
    dock.label_raster_combo = _layer_combo("labelRaster", RASTER)
    form.addRow("Label raster", dock.label_raster_combo)
    dock.label_vector_combo = _layer_combo("labelVector", POLYGON)
    form.addRow("Label polygons", dock.label_vector_combo)
    dock.field_combo = QgsFieldComboBox()
    dock.field_combo.setObjectName("classField")
    form.addRow("Class field", dock.field_combo)
    return inputs


def _run_box(dock: QDockWidget) -> QGroupBox:
    """Run: output folder, run name, preset and the Advanced section."""
    run = QGroupBox("Run")
    rform = QFormLayout(run)
    dock.output_widget = _folder_widget("outputFolder")
    dock.output_widget.setDialogTitle("Output folder for SatSynth runs")
    rform.addRow("Output folder", dock.output_widget)
    dock.run_name_edit = QLineEdit("satsynth run")
    dock.run_name_edit.setObjectName("runName")
    dock.run_name_edit.setToolTip("The run's sub-folder and its layer group")
    rform.addRow("Run name", dock.run_name_edit)
    dock.preset_combo = QComboBox()
    dock.preset_combo.setObjectName("preset")
    dock.preset_combo.addItems(list(PRESETS))
    rform.addRow("Preset", dock.preset_combo)
    dock.advanced_box = QgsCollapsibleGroupBox("Advanced")
    dock.advanced_box.setObjectName("advanced")
    dock.advanced_box.setCollapsed(True)
    _build_advanced(dock, dock.advanced_box)
    rform.addRow(dock.advanced_box)
    return run


def _stages_box(dock: QDockWidget) -> QGroupBox:
    """Stages: a button per stage, the Segment box, and Run all."""
    stages = QGroupBox("Stages")
    grid = QGridLayout(stages)
    dock.buttons: dict[str, QPushButton] = {}
    for i, stage in enumerate(["prepare", "train_generator", "synthesize", "train_segmenter",
                               "evaluate", "experiment"]):
        grid.addWidget(_stage_button(dock, stage), i // 2, i % 2)
    dock.buttons["experiment"].setWhatsThis(
        "Trains a segmenter per synthetic ratio R and seed (Advanced: experiment ratios, "
        "seeds, budget, real fraction) and compares each with real chips only; the report "
        "opens when done. Cancel keeps the finished runs: run it again to resume.")
    grid.addWidget(_segment_box(dock), 3, 0, 1, 2)
    grid.addWidget(_stage_button(
        dock, "run_all", "Prepare, train the generator, synthesize, train the segmenter and "
        "segment the image, as one algorithm (Run full pipeline)"), 4, 0, 1, 2)
    return stages


def _segment_box(dock: QDockWidget) -> QGroupBox:
    """Segment: the raster, the area, the model, and the Segment and Export buttons."""
    seg_box = QGroupBox("Segment")
    sform = QFormLayout(seg_box)
    dock.segment_combo = _layer_combo("segmentLayer", RASTER)
    sform.addRow("Raster", dock.segment_combo)
    dock.extent_combo = QComboBox()
    dock.extent_combo.setObjectName("segmentExtent")
    for text, key in (("Whole layer", "layer"), ("Canvas extent", "canvas"), ("AOI layer", "aoi")):
        dock.extent_combo.addItem(text, key)
    sform.addRow("Area", dock.extent_combo)
    dock.aoi_combo = _layer_combo("aoiLayer", POLYGON)
    sform.addRow("AOI", dock.aoi_combo)
    dock.segmenter_widget = _folder_widget("segmenterFolder")
    dock.segmenter_widget.lineEdit().setPlaceholderText("the run's segmenter")
    sform.addRow("Model", dock.segmenter_widget)
    sform.addRow(_stage_button(dock, "segment"))
    sform.addRow(_stage_button(
        dock, "export", "Write the segmenter as an ONNX model beside its folder (SEGMENTER.onnx), "
        "with the metadata Deepness reads (Export segmenter to ONNX)"))
    return seg_box


def _progress_box(dock: QDockWidget) -> QGroupBox:
    """Progress: the stage's text, the bar with Cancel, the time and the log."""
    prog = QGroupBox("Progress")
    pl = QVBoxLayout(prog)
    dock.stage_label = _label("stageText", "Idle")
    pl.addWidget(dock.stage_label)
    row = QHBoxLayout()
    dock.progress_bar = QProgressBar()
    dock.progress_bar.setRange(0, 1000)
    dock.progress_bar.setValue(0)
    dock.cancel_button = QPushButton("Cancel")
    dock.cancel_button.setObjectName("cancel")
    dock.cancel_button.setEnabled(False)
    row.addWidget(dock.progress_bar, 1)
    row.addWidget(dock.cancel_button)
    pl.addLayout(row)
    dock.time_label = QLabel("")
    dock.time_label.setObjectName("timeText")
    pl.addWidget(dock.time_label)
    dock.log = QPlainTextEdit()
    dock.log.setObjectName("log")
    dock.log.setReadOnly(True)
    dock.log.setMaximumBlockCount(5000)
    dock.log.setMinimumHeight(120)
    pl.addWidget(dock.log)
    return prog


def _label(name: str, text: str) -> QLabel:
    """A status line that wraps."""
    label = QLabel(text)
    label.setObjectName(name)
    label.setWordWrap(True)
    return label


def _layer_combo(name: str, filters: Any) -> QgsMapLayerComboBox:
    """A choice of the project's layers of ``filters``' kind, empty until one is chosen."""
    combo = QgsMapLayerComboBox()
    combo.setObjectName(name)
    combo.setFilters(filters)
    combo.setAllowEmptyLayer(True)
    combo.setLayer(None)
    return combo


def _folder_widget(name: str) -> QgsFileWidget:
    """A folder chooser."""
    widget = QgsFileWidget()
    widget.setObjectName(name)
    widget.setStorageMode(QgsFileWidget.GetDirectory)
    return widget


def _stage_button(dock: QDockWidget, stage: str, tip: str = "") -> QPushButton:
    """The button that runs ``stage``, in ``dock.buttons``."""
    button = QPushButton(STAGES[stage])
    button.setObjectName(f"stage_{stage}")
    if tip:
        button.setToolTip(tip)
    dock.buttons[stage] = button
    return button


#: The Advanced section's row labels, by :class:`StageSettings` field.
ADVANCED_LABELS = {
    "chip_size": "Chip size", "stride": "Stride", "val_fraction": "Validation share",
    "recipe": "Generator recipe",
    "generator_size": "Generator size", "generator_steps": "Generator steps",
    "batch_size": "Batch size", "synth_count": "Synthetic pairs",
    "sampler": "Sampler", "sampler_steps": "Sampler steps", "upsampler": "Upsampler",
    "arch": "Architecture", "encoder": "Encoder",
    "pretrained": "Pretrained weights", "torchgeo_weights": "TorchGeo weights",
    "encoder_weights": "Encoder weights file", "epochs": "Epochs",
    "synthetic_ratio": "Synthetic ratio", "mixed_precision": "Mixed precision",
    "experiment_ratios": "Experiment ratios", "experiment_seeds": "Experiment seeds",
    "experiment_budget": "Experiment budget", "real_fraction": "Real fraction",
    "device": "Device",
    "tile": "Tile", "overlap": "Overlap", "seed": "Seed"}


def _build_advanced(dock: QDockWidget, box: QgsCollapsibleGroupBox) -> None:
    """The Advanced section: one widget per :class:`StageSettings` field, in ``dock.adv``."""
    form = QFormLayout(box)
    dock.adv: dict[str, QWidget] = {**_data_widgets(), **_segmenter_widgets(),
                                    **_run_widgets()}
    for name, w in dock.adv.items():
        w.setObjectName(f"adv_{name}")
        form.addRow(ADVANCED_LABELS[name], w)
    # the engine takes strides between 1 and the chip size, overlaps below the tile size
    dock.adv["chip_size"].valueChanged.connect(dock.adv["stride"].setMaximum)
    dock.adv["tile"].valueChanged.connect(lambda v: dock.adv["overlap"].setMaximum(v // 2))


def _spin(lo: int, hi: int, step: int = 1, tip: str = "") -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setToolTip(tip)
    return w


def _dspin(lo: float, hi: float, step: float, tip: str = "") -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setDecimals(2)
    w.setToolTip(tip)
    return w


def _combo(items: list[str], tip: str = "") -> QComboBox:
    w = QComboBox()
    w.addItems(items)
    w.setToolTip(tip)
    return w


def _data_widgets() -> dict[str, QWidget]:
    """Chips, the generator and synthesis."""
    upsampler = QgsFileWidget()
    upsampler.setStorageMode(QgsFileWidget.GetDirectory)
    upsampler.setToolTip("Synthesize: an upsampler folder (Train upsampler in the "
                         "toolbox) for the super-resolution cascade; empty: none")
    return {
        "chip_size": _spin(32, 1024, 32, "Chip size in pixels (a multiple of 32)"),
        "stride": _spin(8, 1024, 8, "Distance between chips; smaller than the size overlaps "
                        "them"),
        "val_fraction": _dspin(0.0, 0.9, 0.05, "Share of chips kept for validation"),
        "recipe": _combo(list(params.RECIPES),
                         "Generator recipe: default, or paper (SatSynth as published: base UNet, "
                         "128 px chips, epsilon, linear schedule, unconditional, DDPM sampling; "
                         "a GPU)"),
        "generator_size": _combo(list(params.GENERATOR_SIZES), "Size of the diffusion model"),
        "generator_steps": _spin(1, 10_000_000, 100, "Generator training steps"),
        "batch_size": _spin(1, 1024, 1, "Chips per training step"),
        "synth_count": _spin(1, 1_000_000, 16, "Synthetic image-mask pairs to sample"),
        "sampler": _combo(list(params.SAMPLERS), "Diffusion sampler"),
        "sampler_steps": _spin(1, 1000, 5, "Denoising steps per sample"),
        "upsampler": upsampler,
    }


def _segmenter_widgets() -> dict[str, QWidget]:
    """The segmenter: architecture, encoder and its weights, training."""
    tg = QLineEdit()
    tg.setPlaceholderText(params.TORCHGEO_SUGGESTED)
    tg.setToolTip("With pretrained = torchgeo: TorchGeo's weights name (RGB ResNet weights, "
                  "the encoder they were trained for, e.g. resnet50)")
    weights = QgsFileWidget()
    weights.setFilter("Weights (*.safetensors *.pth *.pt)")
    weights.setToolTip("A local weights file for the encoder; it is used instead of the "
                       "pretrained choice above. Empty: that choice.")
    return {
        "arch": _combo(list(params.ARCHITECTURES), "Segmentation architecture"),
        "encoder": _combo(list(params.ENCODERS), "Encoder backbone"),
        "pretrained": _combo(
            list(params.PRETRAINED),
            "The encoder's starting weights: none (random, or the file below), imagenet, or "
            "torchgeo (the TorchGeo weights named below); downloaded once into their cache (Set "
            "up engine can fetch them)"),
        "torchgeo_weights": tg,
        "encoder_weights": weights,
        "epochs": _spin(1, 10_000, 1, "Segmenter training epochs"),
        "synthetic_ratio": _dspin(0.0, 10.0, 0.25, "Synthetic pairs per real pair when training "
                                  "the segmenter (R in the paper)"),
        "mixed_precision": _combo(list(params.MIXED_PRECISION),
                                  "Mixed precision for training on a CUDA GPU (ignored on a CPU)"),
    }


def _run_widgets() -> dict[str, QWidget]:
    """The experiment, the device, segmenting and the seed."""
    ratios = QLineEdit()
    ratios.setToolTip("Experiment: synthetic pairs per real pair R to compare, comma "
                      "separated (0, real only, is always run)")
    return {
        "experiment_ratios": ratios,
        "experiment_seeds": _spin(1, 100, 1, "Experiment: runs per ratio (3+ give an interval)"),
        "experiment_budget": _combo(list(params.BUDGETS), "Experiment: steps (the same compute "
                                    "for every R), epochs, or converge"),
        "real_fraction": _dspin(0.01, 1.0, 0.05, "Experiment: share of the real training chips "
                                "used (the low-data setting)"),
        "device": _combo(list(params.DEVICES), "Compute device"),
        "tile": _spin(64, 8192, 64, "Tile size when segmenting"),
        "overlap": _spin(0, 1024, 8, "Tile overlap when segmenting"),
        "seed": _spin(0, 2**31 - 1, 1, "Random seed"),
    }


def read_advanced(adv: dict[str, QWidget]) -> StageSettings:
    """The Advanced section's values."""
    values: dict[str, Any] = {}
    for name, w in adv.items():
        if isinstance(w, QComboBox):
            values[name] = w.currentText()
        elif isinstance(w, QLineEdit):
            values[name] = w.text().strip()
        elif isinstance(w, QgsFileWidget):
            values[name] = w.filePath().strip()
        else:
            values[name] = w.value()
    return StageSettings.from_dict(values)


def write_advanced(adv: dict[str, QWidget], s: StageSettings) -> None:
    """Show ``s`` in the Advanced section (a choice missing from a list is added to it)."""
    for name, value in s.to_dict().items():
        w = adv[name]
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

