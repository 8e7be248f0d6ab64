"""The "Set up engine" dialog: shows the plan, runs it in the background, streams pip's log."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import setup_engine
from ..contract import contract
from . import params

SETTINGS_PREFIX = "SatSynth/setup/"


def parse_weights(text: str) -> list[tuple[str, str]]:
    """'imagenet resnet18, torchgeo:X resnet50' -> [(weights, encoder), ...] (the encoder
    defaults to train-segmenter's)."""
    pairs = []
    for item in text.split(","):
        words = item.split()
        if words:
            pairs.append((words[0], words[1] if len(words) > 1
                          else contract.SegmenterTrainFields().encoder))
    return pairs


class SetupEngineDialog(QDialog):
    """Choose the Python and the environment folder, then create/repair the engine."""

    def __init__(self, dock: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent or dock)
        self.dock = dock
        self.task: Any = None
        self.plan: setup_engine.SetupPlan | None = None
        self.setWindowTitle("SatSynth: set up engine")
        self.resize(640, 480)
        layout = QVBoxLayout(self)
        intro = QLabel(
            "Creates a separate Python environment with PyTorch and the SatSynth engine (QGIS's "
            "own Python is not changed), with a CUDA build of torch when an NVIDIA GPU is "
            "present, the CPU build otherwise. Needs an internet connection and 1-5 GB of disk. "
            "Running it again repairs or upgrades the environment.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        s = QgsSettings()
        self.python_widget = QgsFileWidget()
        self.python_widget.setObjectName("setupPython")
        self.python_widget.setFilePath(s.value(SETTINGS_PREFIX + "python", "") or "")
        self.python_widget.lineEdit().setPlaceholderText("found automatically (Python >= 3.10)")
        form.addRow("Python", self.python_widget)
        self.venv_widget = QgsFileWidget()
        self.venv_widget.setObjectName("setupVenv")
        self.venv_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.venv_widget.setFilePath(s.value(SETTINGS_PREFIX + "venv", "")
                                     or str(setup_engine.default_venv_dir()))
        form.addRow("Environment folder", self.venv_widget)
        self.weights_edit = QLineEdit(self._chosen_weights())
        self.weights_edit.setObjectName("setupWeights")
        self.weights_edit.setPlaceholderText("none (e.g. imagenet resnet18, or "
                                             "torchgeo:ResNet50_Weights.FMOW_RGB_GASSL resnet50)")
        self.weights_edit.setToolTip(
            "Pretrained encoder weights to download into their cache while online, as "
            "'WEIGHTS ENCODER' pairs separated by commas (the dock's choice is filled in); "
            "training from them then works offline")
        form.addRow("Fetch encoder weights", self.weights_edit)
        layout.addLayout(form)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.step_label = QLabel("")
        self.step_label.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(20000)
        layout.addWidget(self.step_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.log, 1)
        buttons = QHBoxLayout()
        self.plan_button = QPushButton("Show plan")
        self.start_button = QPushButton("Set up")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        for b in (self.plan_button, self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.plan_button.clicked.connect(self.show_plan)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)

    def _chosen_weights(self) -> str:
        """The dock's pretrained choice as 'WEIGHTS ENCODER' ('' for none or a file)."""
        try:
            s = self.dock.stage_settings()
        except AttributeError:  # no dock (tests, the toolbox)
            return ""
        if s.encoder_weights or s.pretrained == "none":
            return ""
        name = s.pretrained if s.pretrained != "torchgeo" else (
            "torchgeo:" + (s.torchgeo_weights or params.TORCHGEO_SUGGESTED))
        return f"{name} {s.encoder}"

    def make_plan(self) -> setup_engine.SetupPlan | None:
        """The plan for the chosen Python and folder (errors go to the log)."""
        try:
            python = self.python_widget.filePath().strip() or None
            info = setup_engine.find_python(python)
            return setup_engine.build_plan(self.venv_widget.filePath().strip(), python=info,
                                           weights=parse_weights(self.weights_edit.text()))
        except setup_engine.SetupError as exc:
            self.log.appendPlainText(str(exc))
            self.step_label.setText(str(exc))
            return None

    def show_plan(self) -> None:
        plan = self.make_plan()
        if plan is not None:
            self.log.appendPlainText(plan.summary())
            for step in plan.steps:
                self.log.appendPlainText(f"  {step.name}: {step.describe()}")

    def start(self) -> None:
        if not self.venv_widget.filePath().strip():
            self.step_label.setText("Choose the environment folder first.")
            return
        self.plan = self.make_plan()
        if self.plan is None:
            return
        s = QgsSettings()
        s.setValue(SETTINGS_PREFIX + "python", self.python_widget.filePath().strip())
        s.setValue(SETTINGS_PREFIX + "venv", self.venv_widget.filePath().strip())
        self.task = setup_engine.setup_task(self.plan)
        self.task.line.connect(self.log.appendPlainText)
        self.task.stepChanged.connect(self.step_label.setText)
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p * 10)))
        self.task.finishedWith.connect(self._done)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        if self.dock is not None:
            self.dock.setup_task = self.task
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _done(self, ok: bool, error: str, report: dict) -> None:
        self.task = None
        if self.dock is not None:
            self.dock.setup_task = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            self.progress.setValue(1000)
            text = (f"Engine ready: SatSynth {report.get('satsynth', '?')}, torch "
                    f"{report.get('torch', '?')} on {str(report.get('device', '?')).upper()}. "
                    f"Recorded as the engine: {self.plan.engine_python if self.plan else ''}")
            self.step_label.setText(text)
            self.log.appendPlainText(text)
            if self.dock is not None:
                self.dock.refresh_engine_status()
        else:
            self.step_label.setText(error)
            self.log.appendPlainText(error)
