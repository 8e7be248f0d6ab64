"""Running a :class:`~.plan.SetupPlan`: step by step, pip's output relayed line by line, a
failing step named with what to do, and no half-built environment left behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from ..contract import contract
from ..process import run_streaming
from .errors import SetupCancelled, SetupError
from .pip import PIP_EVENT, diagnosis, is_disk_full
from .plan import CHECK_STEP, SetupPlan, Step

#: What pip is told in every step: no version-check notice, never wait for input.
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
#: Seconds between asking a step's command to stop (SIGTERM) and killing it.
GRACE_SECONDS = 5.0

LineSink = Callable[[str], None]
ProgressSink = Callable[[float, str], None]


def run_plan(plan: SetupPlan, on_line: LineSink | None = None,
             on_progress: ProgressSink | None = None,
             is_cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Execute the plan; returns the engine's ``check`` report. Raises :class:`SetupError` naming
    the failing step, or :class:`SetupCancelled`; either way the staging folder is removed, so
    no half-built environment is left behind."""
    log = on_line or (lambda _s: None)
    try:
        return _run_steps(plan, log, on_progress or (lambda _f, _m: None), is_cancelled)
    except BaseException:
        if plan.staging_dir is not None and plan.staging_dir.exists():
            log(f"Removing the unfinished environment {plan.staging_dir}")
            shutil.rmtree(plan.staging_dir, ignore_errors=True)
        raise


def _run_steps(plan: SetupPlan, log: LineSink, progress: ProgressSink,
               is_cancelled: Callable[[], bool]) -> dict[str, Any]:
    total = sum(s.weight for s in plan.steps) or 1.0
    done = 0.0
    report: dict[str, Any] = {}
    log(plan.summary())
    for step in plan.steps:
        if is_cancelled():
            raise SetupCancelled()
        progress(done / total, step.name)
        log(f"== {step.name}: {step.describe()}")
        if step.action is not None:
            try:
                step.action()
            except OSError as exc:
                problem = ("the disk is full." if is_disk_full(str(exc)) else str(exc))
                raise SetupError(step.name, problem, step.advice) from None
        else:
            assert step.argv is not None
            lines = _stream(step, log, is_cancelled,
                            lambda k, msg, d=done, w=step.weight: progress(
                                (d + w * (1 - 0.8 ** k) * 0.9) / total, msg))
            if step.name == CHECK_STEP:
                report = _parse_check(lines, step)
        done += step.weight
    progress(1.0, "engine ready")
    return report


def _stream(step: Step, log: LineSink, is_cancelled: Callable[[], bool],
            sub_progress: Callable[[int, str], None]) -> list[str]:
    """Run one command, relaying its output line by line; raises SetupError on failure."""
    assert step.argv is not None
    lines: list[str] = []
    events = 0

    def on_line(_stream: str, line: str) -> None:
        nonlocal events
        if not line:
            return
        lines.append(line)
        log(line)
        if PIP_EVENT.match(line):
            events += 1
            sub_progress(events, f"{step.name}: {line[:80]}")

    try:
        finished = run_streaming(step.argv, on_line, grace_s=GRACE_SECONDS,
                                 is_cancelled=is_cancelled, env=PIP_ENV, merge_stderr=True)
    except OSError as exc:
        raise SetupError(step.name, f"cannot start {step.argv[0]} ({exc}).", step.advice) from None
    rc = finished.returncode
    if finished.cancelled or is_cancelled():
        raise SetupCancelled()
    if rc != 0:
        tail = next((ln for ln in reversed(lines) if ln.strip().lower().startswith("error")),
                    lines[-1] if lines else "no output")
        found = diagnosis(lines)
        raise SetupError(step.name, (f"{found} " if found else "")
                         + f"'{step.describe()}' exited with code {rc}: {tail}", step.advice)
    return lines


def _parse_check(lines: list[str], step: Step) -> dict[str, Any]:
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == contract.EVENT_DONE:
            return dict(event.get("outputs") or {})
    raise SetupError(step.name, "the engine did not report its version and device.", step.advice)
