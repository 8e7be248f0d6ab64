"""Finding the Python that creates the engine's environment (never QGIS's own), and the Python
inside an environment."""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..process import run_captured
from .errors import SetupError

MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class PythonInfo:
    """A Python interpreter that can create the engine's environment."""

    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


def probe_python(path: str) -> PythonInfo | None:
    """The interpreter's version, or None when ``path`` does not run as Python."""
    res = run_captured([path, "-c", "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"])
    if res is None or res.returncode != 0:
        return None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", res.stdout)
    if not m:
        return None
    return PythonInfo(path, (int(m.group(1)), int(m.group(2)), int(m.group(3))))


def python_candidates() -> list[str]:
    """Interpreters to try, newest first: pythonX.Y on PATH, then python3/python (and the
    Windows launcher). QGIS's own executable is not a candidate."""
    names = [f"python3.{minor}" for minor in range(14, MIN_PYTHON[1] - 1, -1)]
    names += ["python3", "python"]
    found: list[str] = []
    for name in names:
        p = shutil.which(name)
        if p and p not in found:
            found.append(p)
    if sys.platform == "win32":
        launcher = shutil.which("py")
        if launcher:
            res = run_captured([launcher, "-3", "-c", "import sys; print(sys.executable)"])
            if res is not None and res.returncode == 0 and res.stdout.strip():
                found.append(res.stdout.strip().splitlines()[-1])
    return found


def find_python(user_python: str | None = None) -> PythonInfo:
    """The Python that creates the environment: ``user_python`` when given, else the newest
    suitable one on the system. Raises :class:`SetupError` when none fits."""
    step = "find Python"
    if user_python:
        info = probe_python(user_python)
        if info is None:
            raise SetupError(step, f"{user_python} does not run as a Python interpreter "
                                   "with the 'venv' module.",
                             "Choose the python executable itself (e.g. /usr/bin/python3.11 "
                             "or C:\\Python311\\python.exe).")
        if info.version[:2] < MIN_PYTHON:
            raise SetupError(step, f"{user_python} is Python {info.version_text}; the engine "
                                   f"needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer.",
                             "Install a newer Python (python.org, or your package manager) "
                             "and point the set-up to it.")
        return info
    tried = []
    for path in python_candidates():
        info = probe_python(path)
        if info is None:
            continue
        tried.append(f"{path} ({info.version_text})")
        if info.version[:2] >= MIN_PYTHON:
            return info
    listing = "; found: " + ", ".join(tried) if tried else ""
    raise SetupError(step, f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer was found on "
                           f"PATH{listing}.",
                     "Install Python 3.10-3.13 (python.org, or e.g. 'apt install python3 "
                     "python3-venv'), or choose its python executable in the set-up dialog.")


def venv_python(venv_dir: str | Path, platform: str = sys.platform) -> Path:
    """The Python executable inside a virtual environment."""
    venv_dir = Path(venv_dir)
    if platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"
