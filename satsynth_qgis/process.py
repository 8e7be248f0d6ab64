"""Starting the plugin's child processes: the engine, and the Pythons and pips of *Set up engine*.

Every child is started from an argument list (never a shell), in its own process group, with
:func:`clean_environment`; its output is read line by line as it arrives (:func:`run_streaming`),
and a cancelled child is asked to stop (SIGTERM), killed after a grace period, and whatever it
started in its process group is killed with it. Pure Python: no QGIS imports.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Environment variables of QGIS's own Python/GDAL/PROJ (and of an activated virtual environment)
#: that must not leak into a child: they would point its Python, rasterio and pyproj at QGIS's
#: copies, or make a venv's Python believe it runs inside another environment.
SCRUBBED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                "VIRTUAL_ENV", "__PYVENV_LAUNCHER__",
                "PROJ_LIB", "PROJ_DATA", "GDAL_DATA", "GDAL_DRIVER_PATH")
#: Seconds a child that has gone quiet after exiting may hold its output pipes open (through a
#: grandchild that inherited them) before reading stops.
PIPE_LINGER_SECONDS = 2.0

#: Receives one output line (without its line ending) and the stream it came from: "out" or "err".
LineSink = Callable[[str, str], None]


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child's environment: ours without :data:`SCRUBBED_ENV`, unbuffered UTF-8 output,
    then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env


def popen_options() -> dict[str, Any]:
    """Popen keywords every child gets: its own process group (so stopping it also reaches the
    processes it started) and, on Windows, no console window."""
    if sys.platform == "win32":
        flags = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                 | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        return {"creationflags": flags}
    return {"start_new_session": True}


def command_line(argv: Sequence[str]) -> str:
    """The argument list as a user would type it in this platform's shell (for logs)."""
    if sys.platform == "win32":
        return subprocess.list2cmdline(list(argv))
    return " ".join(shlex.quote(a) for a in argv)


def run_captured(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """Run a short command to completion and capture its text output; None when it cannot be
    started or does not finish within ``timeout`` seconds."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=clean_environment(), **popen_options())
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass(frozen=True)
class Finished:
    """How a streamed child ended: its exit code, and whether it was stopped by a cancel."""

    returncode: int | None
    cancelled: bool


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Ask the child to stop (SIGTERM), kill it after ``grace_s`` seconds, then kill what is
    left of its process group."""
    if proc.poll() is None:
        try:
            proc.terminate()
        except OSError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's process group (the processes it started), POSIX only."""
    if sys.platform == "win32":
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _reader(stream: Any, name: str, out: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            out.put((name, line.rstrip("\r\n")))
    except (OSError, ValueError):
        pass
    finally:
        out.put((name, None))


def run_streaming(argv: Sequence[str], on_line: LineSink, *,
                  grace_s: float, is_cancelled: Callable[[], bool] = lambda: False,
                  cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                  merge_stderr: bool = False) -> Finished:
    """Run ``argv`` and pass each line of its stdout and stderr to ``on_line`` as it arrives.

    ``env`` is added to :func:`clean_environment`. ``merge_stderr`` sends stderr into stdout (one
    stream, "out", in the child's own order). ``is_cancelled`` is polled about ten times a second,
    also while the child is silent; once it is true the child is stopped (:func:`stop`, SIGTERM
    then a kill after ``grace_s`` seconds) and the result says ``cancelled``. ``on_line`` runs on the calling thread; if it raises, the child is
    stopped before the exception propagates. Raises :class:`OSError` when the child cannot start.
    """
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=cwd,
                            env=clean_environment(env), **popen_options())
    lines: queue.Queue = queue.Queue()
    streams = [(proc.stdout, "out")] + ([] if merge_stderr else [(proc.stderr, "err")])
    readers = [threading.Thread(target=_reader, args=(stream, name, lines), daemon=True)
               for stream, name in streams]
    for t in readers:
        t.start()
    open_streams = len(readers)
    cancelled = False
    exited_at: float | None = None
    try:
        while open_streams:
            if is_cancelled():
                cancelled = True
                stop(proc, grace_s)
                break
            try:
                name, line = lines.get(timeout=0.1)
            except queue.Empty:
                # a grandchild holding the pipes open must not keep us waiting forever
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > PIPE_LINGER_SECONDS:
                        break
                continue
            if line is None:
                open_streams -= 1
            else:
                on_line(name, line)
        if not cancelled:
            while proc.poll() is None:  # streams closed; the process is exiting
                if is_cancelled():
                    cancelled = True
                    stop(proc, grace_s)
                    break
                time.sleep(0.05)
    finally:
        if proc.poll() is None:  # an exception in a callback: never leave the child behind
            stop(proc, 0.5)
        _kill_group(proc)
        for t in readers:
            t.join(timeout=1.0)
        for stream, _name in streams:
            try:
                stream.close()
            except OSError:
                pass
    return Finished(proc.returncode, cancelled)
