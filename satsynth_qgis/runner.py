"""Finding and running the SatSynth engine: one child process per stage, JSON progress lines.

The plugin never imports the deep-learning stack; it starts the engine (a separate Python with
torch) with an argument list, ``--progress json``, reads the protocol from the child's stdout and
its log from stderr, and relays both to a :class:`QgsFeedback`. Every Processing algorithm and the
dock panel go through :func:`run_engine`.

Where the engine is looked for, in order:

1. the setting *Engine Python* (Processing > Options > Providers > SatSynth), stored in QgsSettings
   under :data:`SETTING_KEY`;
2. the ``SATSYNTH_PYTHON`` environment variable;
3. the repository's ``.venv`` when the plugin runs from a source checkout;
4. a ``satsynth`` executable on ``PATH``.

Each of these may name a Python interpreter (run as ``python -m satsynth``), the ``satsynth``
executable itself, or a virtual environment folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import QgsFeedback, QgsProcessingException, QgsSettings

from .contract import contract
from .process import command_line, run_streaming

#: Name of the Processing setting (Processing > Options > Providers > SatSynth).
SETTING_NAME = "SATSYNTH_ENGINE_PYTHON"
#: QgsSettings key that setting is stored under (what ProcessingConfig uses).
SETTING_KEY = f"Processing/Configuration/{SETTING_NAME}"
ENV_VAR = "SATSYNTH_PYTHON"
#: Seconds between asking the engine to stop (SIGTERM) and killing it.
GRACE_SECONDS = 3.0
_PLUGIN_DIR = Path(__file__).resolve().parent


class EngineNotFound(QgsProcessingException):
    """No usable engine; the message says where we looked and what to do."""


class EngineError(QgsProcessingException):
    """The engine ran and failed: ``message`` says so for the user (naming the command),
    ``engine_message`` is the engine's own error message, as its protocol's "error" event
    carried it (None when the engine reported none: it crashed or was killed)."""

    def __init__(self, message: str, exit_code: int | None = None,
                 engine_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.engine_message = engine_message


class EngineCancelled(EngineError):
    """The run was cancelled through the feedback object and the engine was stopped."""


@dataclass(frozen=True)
class Engine:
    """How to start the engine: a command prefix, and where it was found."""

    command: tuple[str, ...]
    source: str

    def argv(self, args: Sequence[str]) -> list[str]:
        """The full argument list for one engine command."""
        return [*self.command, *[str(a) for a in args]]

    def describe(self) -> str:
        """One line for logs: the command and where it came from."""
        return f"{' '.join(self.command)}  (from {self.source})"


# --- discovery ------------------------------------------------------------------------------------

def engine_setting() -> str:
    """The *Engine Python* setting ('' when unset)."""
    value = QgsSettings().value(SETTING_KEY, "")
    return str(value or "").strip()


def set_engine_setting(path: str | os.PathLike[str] | None) -> None:
    """Record the engine (a Python, a ``satsynth`` executable or a venv folder) as the setting.

    Used by the dock's *Set up engine* action; an empty value clears the setting.
    """
    QgsSettings().setValue(SETTING_KEY, str(path) if path else "")
    try:  # keep Processing's cached copy in step when Processing is loaded
        from processing.core.ProcessingConfig import ProcessingConfig

        if SETTING_NAME in ProcessingConfig.settings:
            ProcessingConfig.settings[SETTING_NAME].value = str(path) if path else ""
    except ImportError:
        pass


def _venv_python(folder: Path) -> Path | None:
    for rel in ("bin/python", "bin/python3", "Scripts/python.exe"):
        candidate = folder / rel
        if candidate.is_file():
            return candidate
    return None


def command_for(value: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The command prefix for a configured path, or None when it names nothing runnable.

    A folder is taken as a virtual environment; an executable called ``satsynth*`` is the CLI
    itself; any other executable is a Python interpreter that has the engine installed.
    """
    path = Path(os.path.expanduser(str(value).strip().strip('"')))
    if not str(value).strip():
        return None
    if path.is_dir():
        py = _venv_python(path)
        return (str(py), "-m", "satsynth") if py else None
    if not path.is_file() and not path.suffix and sys.platform == "win32":
        path = path.with_suffix(".exe")
    if not path.is_file() or not os.access(path, os.X_OK):
        return None
    if path.name.lower().startswith("satsynth"):
        return (str(path),)
    return (str(path), "-m", "satsynth")


def checkout_root() -> Path | None:
    """The repository root when the plugin runs from a source checkout (else None)."""
    root = _PLUGIN_DIR.parent
    if (root / "engine" / "satsynth").is_dir() and (root / "pyproject.toml").is_file():
        return root
    return None


def _candidates() -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(source, value looked at, command or None) for every place, in search order."""
    found: list[tuple[str, str, tuple[str, ...] | None]] = []
    setting = engine_setting()
    found.append(("setting 'Engine Python'", setting or "(not set)",
                  command_for(setting) if setting else None))
    env = os.environ.get(ENV_VAR, "").strip()
    found.append((f"environment variable {ENV_VAR}", env or "(not set)",
                  command_for(env) if env else None))
    root = checkout_root()
    if root is not None:
        venv = root / ".venv"
        found.append(("source checkout", str(venv), command_for(venv) if venv.is_dir() else None))
    exe = shutil.which("satsynth")
    found.append(("PATH", exe or "no 'satsynth' executable", (exe,) if exe else None))
    return found


def not_found_message(candidates: list[tuple[str, str, tuple[str, ...] | None]] | None = None) -> str:
    """What was looked at, and exactly what the user can do about it."""
    candidates = candidates if candidates is not None else _candidates()
    looked = "\n".join(f"  - {src}: {val}" + ("" if cmd or val.startswith(("(not set)", "no "))
                                               else " (not an executable, folder or venv)")
                       for src, val, cmd in candidates)
    return (
        "The SatSynth engine was not found. Looked at:\n" + looked + "\n"
        "The engine is a separate Python environment with PyTorch (QGIS's own Python is not "
        "touched). To fix this, either:\n"
        "  1. use the SatSynth dock's 'Set up engine' action, which creates that environment; or\n"
        "  2. create it yourself (Python >= 3.10):\n"
        "       python3 -m venv ~/satsynth-engine\n"
        "       ~/satsynth-engine/bin/pip install /path/to/satsynth   (the engine's source folder)\n"
        "     then set Processing > Options > Providers > SatSynth > 'Engine Python' to\n"
        "     ~/satsynth-engine/bin/python (on Windows: ...\\satsynth-engine\\Scripts\\python.exe),\n"
        f"     or export {ENV_VAR}=~/satsynth-engine/bin/python before starting QGIS or qgis_process.\n"
        "Then run 'SatSynth > Check engine' to confirm."
    )


def find_engine() -> Engine:
    """The engine to use, following the documented search order; raises :class:`EngineNotFound`."""
    candidates = _candidates()
    for source, _value, cmd in candidates:
        if cmd:
            return Engine(cmd, source)
    raise EngineNotFound(not_found_message(candidates))


# --- running --------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What one engine command returned."""

    outputs: dict[str, Any]
    argv: list[str]
    seconds: float
    log_tail: list[str] = field(default_factory=list)


#: How the CLI's last line starts when its protocol "error" event carries the same message.
CLI_ERROR_PREFIXES = (contract.CLI_ERROR, contract.CLI_INTERNAL_ERROR, contract.CLI_CANCELLED)


class _Relay:
    """Turns protocol events and log lines into feedback calls."""

    #: minimum seconds between two progress texts (each one is also a line in the dialog's log)
    TEXT_INTERVAL = 5.0

    def __init__(self, feedback: QgsFeedback | None, outer_stage: str | None = None) -> None:
        self.feedback = feedback
        #: a stage whose task counts the runs of other, nested stages (the experiment's runs):
        #: a nested stage's fraction moves the bar within its run's share of the whole
        self.outer_stage = outer_stage
        self._outer: tuple[float, float] | None = None  # the outer task's fraction and total
        self.outputs: dict[str, Any] | None = None
        self.error: str | None = None
        self.cancelled_by_engine = False
        self.log_tail: deque[str] = deque(maxlen=40)
        self._last_stage: str | None = None
        self._last_text_at = 0.0

    # feedback helpers (QgsFeedback has no push*; QgsProcessingFeedback has)
    def _push(self, method: str, text: str) -> None:
        fn = getattr(self.feedback, method, None)
        if fn is not None:
            fn(text)

    def _warn(self, text: str) -> None:
        if hasattr(self.feedback, "pushWarning"):
            self.feedback.pushWarning(text)
        elif hasattr(self.feedback, "reportError"):
            self.feedback.reportError(text, False)

    def stdout_line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self._push("pushConsoleInfo", f"[engine stdout, not a protocol line] {line}")
            return
        kind = event.get("event")
        if kind == contract.EVENT_PROGRESS:
            self._progress(event)
        elif kind == contract.EVENT_DONE:
            outputs = event.get("outputs")
            self.outputs = outputs if isinstance(outputs, dict) else {}
        elif kind == contract.EVENT_ERROR:
            self.error = str(event.get("message") or "the engine reported an error")
            self.cancelled_by_engine = bool(event.get("cancelled"))
        elif kind in contract.MESSAGE_EVENTS:
            text = str(event.get("message", ""))
            warning = contract.EVENT_WARNING
            (self._warn if warning in (kind, event.get("level")) else
             lambda t: self._push("pushInfo", t))(text)
        else:
            self._push("pushDebugInfo", f"[engine event] {line}")

    def _progress(self, event: dict[str, Any]) -> None:
        fb = self.feedback
        if fb is None:
            return
        fraction = event.get("fraction")
        stage = str(event.get("stage") or "")
        message = str(event.get("message") or stage)
        if self.outer_stage and isinstance(fraction, (int, float)):
            total = event.get("total")
            if stage == self.outer_stage and isinstance(total, (int, float)) and total > 0:
                self._outer = (float(fraction), float(total))
            elif stage != self.outer_stage and self._outer is not None:
                done, total = self._outer
                run = min(int(round(done * total)) + 1, int(total))
                inner = stage
                stage = f"run {run} of {int(total)}"
                message = f"{stage}, {inner}: {message}"
                fraction = done + min(max(float(fraction), 0.0), 1.0) / total
        if isinstance(fraction, (int, float)):
            fb.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        now = time.monotonic()
        if stage != self._last_stage or now - self._last_text_at >= self.TEXT_INTERVAL:
            self._last_stage = stage
            self._last_text_at = now
            text = message if message.startswith(stage) else f"{stage}: {message}"
            eta = event.get("eta_s")
            if isinstance(eta, (int, float)) and eta > 0 and fraction is not None and fraction < 1:
                text += f" (about {format_seconds(eta)} left)"
            if hasattr(fb, "setProgressText"):
                fb.setProgressText(text)

    def stderr_line(self, line: str) -> None:
        if not line.strip():
            return
        self.log_tail.append(line)
        level, rest = contract.parse_log_line(line) or ("", line)
        if level == "INFO":
            self._push("pushInfo", rest)
        elif level == "DEBUG":
            self._push("pushDebugInfo", rest)
        elif level == "WARNING":
            self._warn(rest)
        elif level in ("ERROR", "CRITICAL"):
            if hasattr(self.feedback, "reportError"):
                self.feedback.reportError(rest, False)
        elif line.startswith(CLI_ERROR_PREFIXES):
            # the CLI's own error line repeats its "error" event, which becomes the exception
            # that Processing shows (and logs): relaying it too printed the error again
            pass
        else:  # library warnings, tracebacks
            self._push("pushConsoleInfo", line)


def format_seconds(seconds: float) -> str:
    """'45 s', '3 min', '1 h 05 min'."""
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def engine_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """What the engine's environment adds to ours (then ``env``): it leaves
    ``contract.PLUGIN_LEAVE_CORES`` CPU core(s) to QGIS when it chooses its thread count, unless
    our environment already sets ``contract.ENV_LEAVE_CORES``."""
    extra = ({} if contract.ENV_LEAVE_CORES in os.environ
             else {contract.ENV_LEAVE_CORES: str(contract.PLUGIN_LEAVE_CORES)})
    return {**extra, **(env or {})}


def run_engine(args: Sequence[str], feedback: QgsFeedback | None = None, *,
               engine: Engine | None = None, grace_s: float = GRACE_SECONDS,
               cwd: str | os.PathLike[str] | None = None,
               env: dict[str, str] | None = None,
               outer_stage: str | None = None) -> RunResult:
    """Run one engine command (e.g. ``["prepare", "--image", ...]``) and return its outputs.

    Progress goes to ``feedback.setProgress``/``setProgressText``, the engine's log to
    ``pushInfo``/``pushDebugInfo``/``pushWarning``. When ``feedback.isCanceled()`` becomes true the
    engine is asked to stop, killed after ``grace_s`` seconds, and :class:`EngineCancelled` is
    raised. A failed run raises :class:`EngineError` carrying the engine's own message.
    ``outer_stage`` names a stage whose task counts runs of nested stages (``experiment``): the
    bar then moves through each run instead of restarting at 0 for every run.
    """
    engine = engine or find_engine()
    argv = engine.argv([*args, "--progress", "json"])
    relay = _Relay(feedback, outer_stage)
    if feedback is not None and hasattr(feedback, "pushCommandInfo"):
        feedback.pushCommandInfo(command_line(argv))
    start = time.monotonic()

    def relay_line(stream: str, line: str) -> None:
        (relay.stdout_line if stream == "out" else relay.stderr_line)(line)

    try:
        finished = run_streaming(
            argv, relay_line,
            is_cancelled=(feedback.isCanceled if feedback is not None else lambda: False),
            grace_s=grace_s, cwd=cwd, env=engine_environment(env))
    except OSError as exc:
        raise EngineNotFound(f"Could not start the SatSynth engine ({engine.describe()}): {exc}.\n"
                             + not_found_message()) from None
    code = finished.returncode
    seconds = time.monotonic() - start
    tail = list(relay.log_tail)
    if finished.cancelled:
        raise EngineCancelled("Cancelled: the SatSynth engine was stopped.", code, relay.error)
    if code == 0 and relay.outputs is not None:
        return RunResult(relay.outputs, argv, seconds, tail)
    raise EngineError(_failure_message(args, code, relay, tail), code, relay.error)


def _failure_message(args: Sequence[str], code: int | None, relay: _Relay, tail: list[str]) -> str:
    command = args[0] if args else "?"
    if relay.cancelled_by_engine or (relay.error and code == contract.EXIT_CANCELLED):
        return f"SatSynth {command} was cancelled (the engine received a stop signal)."
    if relay.error:
        return f"SatSynth {command} failed: {relay.error}"
    last = "\n".join(tail[-15:]) or "(the engine wrote nothing on stderr)"
    if code == 0:
        return (f"SatSynth {command} finished without reporting its outputs "
                f"(is the engine too old for this plugin?). Last log lines:\n{last}")
    if code is not None and code < 0:
        return (f"SatSynth {command} was killed by signal {-code} (out of memory?). "
                f"Last log lines:\n{last}")
    return f"SatSynth {command} failed (exit code {code}). Last log lines:\n{last}"


def check_engine(feedback: QgsFeedback | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Run ``satsynth check``: the engine's version, Python, torch, device and GPU."""
    engine = engine or find_engine()
    return run_engine(["check"], feedback, engine=engine).outputs
