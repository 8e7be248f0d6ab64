"""Running the provider's algorithms from the dock, in the background.

The dock runs exactly what the Processing toolbox runs: the algorithm is taken from the
Processing registry by id and executed by a ``QgsProcessingAlgRunnerTask`` on QGIS's task manager,
so QGIS stays responsive. Cancelling cancels the task's feedback, which the engine runner turns
into stopping the engine process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
)
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .results import load_result_layers

#: Context and feedback of every task still running, kept alive until the task ends even when the
#: dock that started it is closed (the task manager's worker thread still uses them).
_ALIVE: dict[int, tuple] = {}


def _release(key: int) -> None:
    _ALIVE.pop(key, None)


def _relay(method: str, level: str) -> Callable[..., None]:
    """QgsProcessingFeedback's ``method``, which also emits its text as a ``level`` message."""

    def relay(self: DockFeedback, text: str, *args: Any) -> None:
        getattr(super(DockFeedback, self), method)(text, *args)
        self.message.emit(level, text)

    relay.__name__ = method
    return relay


class DockFeedback(QgsProcessingFeedback):
    """Feedback that re-emits every message as a signal (the log panel listens)."""

    message = pyqtSignal(str, str)  # level, text

    # each message method (Qt's names) and the level it emits its text with
    setProgressText = _relay("setProgressText", "stage")  # noqa: N815
    pushInfo = _relay("pushInfo", "info")  # noqa: N815
    pushCommandInfo = _relay("pushCommandInfo", "command")  # noqa: N815
    pushDebugInfo = _relay("pushDebugInfo", "debug")  # noqa: N815
    pushConsoleInfo = _relay("pushConsoleInfo", "console")  # noqa: N815
    pushWarning = _relay("pushWarning", "warning")  # noqa: N815
    reportError = _relay("reportError", "error")  # noqa: N815


class StageRunner(QObject):
    """Runs one algorithm at a time; emits progress, messages and the outcome.

    ``finished(ok, algorithm_id, results, error, layer_ids)``: ``layer_ids`` are the layers added
    to the run's group.
    """

    started = pyqtSignal(str)
    progressChanged = pyqtSignal(float)
    message = pyqtSignal(str, str)
    finished = pyqtSignal(bool, str, dict, str, list)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.task: QgsProcessingAlgRunnerTask | None = None
        self.context: QgsProcessingContext | None = None
        self.feedback: DockFeedback | None = None
        self.algorithm_id = ""
        self.group_name = ""
        self.started_at = 0.0
        self.fraction = 0.0
        self.last_error = ""
        self.last_seconds = 0.0
        self.project: QgsProject | None = None

    def is_running(self) -> bool:
        return self.task is not None

    def elapsed(self) -> float:
        """Seconds since the running algorithm started (0 when idle)."""
        return time.monotonic() - self.started_at if self.task is not None else 0.0

    def eta(self) -> float | None:
        """Seconds left, extrapolated from progress so far (None while unknown)."""
        if self.task is None or not 0.01 <= self.fraction < 1.0:
            return None
        return self.elapsed() * (1.0 - self.fraction) / self.fraction

    def start(self, algorithm_id: str, parameters: dict[str, Any], group_name: str,
              project: QgsProject | None = None) -> str:
        """Start ``algorithm_id``; returns '' on success or an error message (nothing runs)."""
        if self.task is not None:
            return "another SatSynth stage is still running"
        alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        if alg is None:
            return (f"the Processing algorithm {algorithm_id} is not available: is the SatSynth "
                    "plugin's Processing provider enabled?")
        project = project or QgsProject.instance()
        context = QgsProcessingContext()
        context.setProject(project)
        feedback = DockFeedback()
        ok, problem = alg.checkParameterValues(parameters, context)
        if not ok:
            return problem or "the parameters are not valid"
        feedback.progressChanged.connect(self._progress)
        feedback.message.connect(self._message)
        task = QgsProcessingAlgRunnerTask(alg, parameters, context, feedback)
        task.executed.connect(self._executed)
        key = id(task)
        _ALIVE[key] = (task, context, feedback, alg)
        task.taskCompleted.connect(lambda k=key: _release(k))
        task.taskTerminated.connect(lambda k=key: _release(k))
        self.task, self.context, self.feedback = task, context, feedback
        self.algorithm_id, self.group_name, self.project = algorithm_id, group_name, project
        self.started_at, self.fraction, self.last_error = time.monotonic(), 0.0, ""
        self.started.emit(algorithm_id)
        QgsApplication.taskManager().addTask(task)
        return ""

    def cancel(self) -> None:
        """Ask the running algorithm to stop (the engine process is stopped by the runner)."""
        if self.feedback is not None:
            self.feedback.cancel()
        if self.task is not None:
            self.task.cancel()

    def _message(self, level: str, text: str) -> None:
        if level == "error" and text.strip():
            self.last_error = text.strip()
        self.message.emit(level, text)

    def _progress(self, percent: float) -> None:
        self.fraction = max(0.0, min(1.0, percent / 100.0))
        self.progressChanged.emit(self.fraction)

    def _executed(self, ok: bool, results: dict) -> None:
        context, feedback = self.context, self.feedback
        algorithm_id, group = self.algorithm_id, self.group_name
        cancelled = feedback is not None and feedback.isCanceled()
        layer_ids: list[str] = []
        error = ""
        if ok and context is not None:
            try:
                layer_ids = [lyr.id() for lyr in
                             load_result_layers(context, feedback, group, self.project)]
            except Exception as exc:  # noqa: BLE001 - a styling problem must not lose results
                error = f"the results were written but could not be loaded: {exc}"
        elif cancelled:
            error = "cancelled"
        else:
            error = self.last_error or "failed (see the log)"
        # the task manager deletes the task after this signal; drop our references first
        self.last_seconds = time.monotonic() - self.started_at
        self.task = None
        self.finished.emit(bool(ok), algorithm_id, dict(results or {}), error, layer_ids)
        self.context = None
        self.feedback = None
