"""Progress reporting and cancellation shared by every stage.

Two modes: a tqdm bar on stderr for people, or JSON lines on stdout for the QGIS plugin:
``{"event": "progress", "stage": ..., "fraction": ..., "message": ...}`` while working, then
``{"event": "done", "outputs": {...}}`` or ``{"event": "error", "message": ...}``. Logs always go to
stderr. SIGINT/SIGTERM set a flag that every progress update checks, so long loops stop within one
step and raise :class:`~satsynth.errors.Cancelled`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from satsynth.contract import (
    EVENT_DONE,
    EVENT_ERROR,
    EVENT_PROGRESS,
    PROGRESS_MODES,
    format_log_line,
)
from satsynth.errors import Cancelled

T = TypeVar("T")
log = logging.getLogger("satsynth")

_cancel = threading.Event()
_mode = "bar"  # "bar" | "json" | "quiet"
_JSON_INTERVAL = 0.25  # seconds between JSON progress lines of one task


def set_mode(mode: str) -> None:
    """Choose how progress is shown: ``bar`` (tqdm on stderr), ``json`` (stdout) or ``quiet``."""
    global _mode
    if mode not in PROGRESS_MODES:
        raise ValueError(f"unknown progress mode {mode!r}")
    _mode = mode


def mode() -> str:
    """The current progress mode."""
    return _mode


def emit(event: dict[str, Any]) -> None:
    """Write one protocol event as a JSON line on stdout (JSON mode only)."""
    if _mode == "json":
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()


def emit_done(outputs: dict[str, Any]) -> None:
    """The last protocol line of a command that succeeded: its outputs."""
    emit({"event": EVENT_DONE, "outputs": outputs})


def emit_error(message: str, cancelled: bool = False) -> None:
    """The last protocol line of a command that failed (or was cancelled)."""
    event: dict[str, Any] = {"event": EVENT_ERROR, "message": message}
    if cancelled:
        event["cancelled"] = True
    emit(event)


def install_signal_handlers() -> None:
    """Turn SIGINT/SIGTERM into a cancel request checked by every progress update."""

    def _handler(signum: int, _frame: Any) -> None:
        if _cancel.is_set():  # second signal: stop right away
            raise KeyboardInterrupt
        log.warning("received %s: stopping after the current step", signal.Signals(signum).name)
        _cancel.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def request_cancel() -> None:
    """Ask running work to stop at its next progress update."""
    _cancel.set()


def reset_cancel() -> None:
    """Clear a previous cancel request (for tests and long-lived processes)."""
    _cancel.clear()


def cancel_requested() -> bool:
    """True when a stop was requested."""
    return _cancel.is_set()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if a stop was requested."""
    if _cancel.is_set():
        raise Cancelled("cancelled")


class Task:
    """One stage of work with a known or unknown total; use as a context manager."""

    def __init__(self, stage: str, total: float | None = None, unit: str = "it",
                 initial: float = 0.0) -> None:
        self.stage = stage
        self.total = total
        self.unit = unit
        self.n = float(initial)  # work already done before this task started (a resumed run)
        self._start = time.monotonic()
        self._last_emit = 0.0
        self._bar = None
        if _mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, leave=False,
                             dynamic_ncols=True, initial=initial)
        self._emit(force=True)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        """Seconds since the task started."""
        return time.monotonic() - self._start

    def update(self, n: float = 1, message: str | None = None, *, force: bool = False,
               **extra: Any) -> None:
        """Advance by ``n``; ``extra`` fields (loss, step, ...) go into the JSON event.

        JSON lines are rate-limited; ``force`` emits this one regardless (a task that counts
        nested stages, such as the experiment's runs, must never drop an update: the plugin
        numbers the nested stages from it).
        """
        check_cancelled()
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if extra:
                self._bar.set_postfix({k: _short(v) for k, v in extra.items()}, refresh=False)
        self._emit(force=force, message=message, **extra)

    def _emit(self, force: bool = False, message: str | None = None, **extra: Any) -> None:
        if _mode != "json":
            return
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total
        if not force and not done and now - self._last_emit < _JSON_INTERVAL:
            return
        self._last_emit = now
        event: dict[str, Any] = {"event": EVENT_PROGRESS, "stage": self.stage,
                                 "fraction": None, "message": message or self.stage}
        if self.total:
            event["fraction"] = round(min(1.0, self.n / self.total), 4)
            rate = self.n / max(now - self._start, 1e-9)
            event["rate"] = round(rate, 4)
            event["eta_s"] = round((self.total - self.n) / rate, 1) if rate > 0 else None
        event["done"] = self.n
        event["total"] = self.total
        event.update(extra)
        emit(event)

    def close(self) -> None:
        """Finish the bar (the JSON stream needs no closing event)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _short(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def task(stage: str, total: float | None = None, unit: str = "it",
         initial: float = 0.0) -> Task:
    """Start a progress task (see :class:`Task`); ``initial`` is the work already done."""
    return Task(stage, total, unit, initial)


def track(items: Iterable[T], stage: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with progress and cancellation checks."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Task(stage, total, unit) as t:
        for item in items:
            check_cancelled()
            yield item
            t.update(1)


class _LogLineFormatter(logging.Formatter):
    """A record as the contract's log line (``LEVEL: message``, the plugin parses it with
    ``contract.parse_log_line``); a traceback, when the record has one, follows it."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return format_log_line(record.levelname, record.getMessage())


def setup_logging(verbose: bool = False) -> None:
    """Send the engine's log to stderr as plain lines (the plugin relays them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLineFormatter())
    root = logging.getLogger("satsynth")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
