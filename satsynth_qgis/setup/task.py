"""Inside QGIS: the set-up as a background task that records the new engine when it works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import SetupCancelled, SetupError
from .plan import FETCH_STEP, SetupPlan
from .run import run_plan


def record_engine(python_path: str | Path) -> None:
    """Remember the new environment's Python as the engine setting."""
    from ..runner import set_engine_setting

    set_engine_setting(str(python_path))


def _make_task_class() -> type:
    from qgis.core import QgsTask
    from qgis.PyQt.QtCore import pyqtSignal

    class SetupEngineTask(QgsTask):
        """Runs a :class:`SetupPlan` in the background; log lines arrive through ``line``."""

        line = pyqtSignal(str)
        stepChanged = pyqtSignal(str)
        finishedWith = pyqtSignal(bool, str, dict)

        def __init__(self, plan: SetupPlan, record: bool = True) -> None:
            super().__init__("SatSynth: set up engine", QgsTask.CanCancel)
            self.plan = plan
            self.record = record
            self.report: dict[str, Any] = {}
            self.error = ""
            self.installed = False

        def run(self) -> bool:
            try:
                self.report = run_plan(
                    self.plan, on_line=self.line.emit,
                    on_progress=lambda f, m: (self.setProgress(100.0 * f),
                                              self.stepChanged.emit(m)),
                    is_cancelled=self.isCanceled)
            except SetupCancelled:
                self.error = "cancelled"
                return False
            except SetupError as exc:
                self.error = str(exc)
                # a download of weights failed after the environment was put in place: it works
                self.installed = exc.step.startswith(FETCH_STEP)
                return False
            except Exception as exc:  # noqa: BLE001 - show anything else, with its type
                self.error = f"Set up engine failed: {exc.__class__.__name__}: {exc}"
                return False
            return True

        def finished(self, ok: bool) -> None:
            if (ok or self.installed) and self.record:
                record_engine(self.plan.engine_python)
            self.finishedWith.emit(ok, self.error, self.report)

    return SetupEngineTask


_TASK_CLASS: type | None = None


def setup_task(plan: SetupPlan, record: bool = True) -> Any:
    """A QgsTask that runs ``plan`` (add it to ``QgsApplication.taskManager()``)."""
    global _TASK_CLASS
    if _TASK_CLASS is None:
        _TASK_CLASS = _make_task_class()
    return _TASK_CLASS(plan, record)
