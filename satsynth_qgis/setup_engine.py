"""The "Set up engine" action: make a separate Python environment with the SatSynth engine.

QGIS's own Python is never touched: a Python >= 3.10 found on the system (or chosen by the user)
creates a virtual environment, pip installs a torch build that fits the machine (CUDA when
``nvidia-smi`` reports a GPU, the CPU build otherwise) and then the engine source carried in the
plugin zip (``engine_src/``). Re-running it repairs or upgrades the same environment. Every step is
an argument list (never a shell), so paths with spaces work; a failing step is named in the error
together with what to do about it.

The plan (:func:`build_plan`) is plain data, so it can be shown to the user and tested without
running it; :func:`run_plan` executes it and streams pip's output line by line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_PYTHON = (3, 10)
TORCH_INDEX = "https://download.pytorch.org/whl"
#: CUDA builds published on the PyTorch index, oldest first; the newest one the driver supports wins.
CUDA_BUILDS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8))
TORCH_PACKAGES = ("torch", "torchvision")
PLUGIN_DIR = Path(__file__).resolve().parent

LineSink = Callable[[str], None]
ProgressSink = Callable[[float, str], None]


class SetupError(Exception):
    """A set-up step failed; the message names the step and what to do."""

    def __init__(self, step: str, problem: str, advice: str = "") -> None:
        self.step = step
        self.problem = problem
        self.advice = advice
        text = f"Set up engine failed at step '{step}': {problem}"
        if advice:
            text += f" What to do: {advice}"
        super().__init__(text)


class SetupCancelled(Exception):
    """The user cancelled the set-up."""


# --- facts about the machine ------------------------------------------------------------------
@dataclass(frozen=True)
class PythonInfo:
    """A Python interpreter that can create the engine's environment."""

    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


@dataclass(frozen=True)
class GpuInfo:
    """What ``nvidia-smi`` reports: GPU names and the newest CUDA version the driver supports."""

    names: tuple[str, ...]
    cuda: tuple[int, int] | None


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child Pythons: without QGIS's PYTHONPATH/PYTHONHOME, unbuffered."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    env.update(extra or {})
    return env


def _run_quiet(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=clean_env(), **_no_window())
    except (OSError, subprocess.SubprocessError):
        return None


def _no_window() -> dict[str, Any]:
    """Keep Windows from flashing a console window for every child process."""
    if sys.platform == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


def probe_python(path: str) -> PythonInfo | None:
    """The interpreter's version, or None when ``path`` does not run as Python."""
    res = _run_quiet([path, "-c", "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"])
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
            res = _run_quiet([launcher, "-3", "-c", "import sys; print(sys.executable)"])
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


def detect_gpu() -> GpuInfo | None:
    """An NVIDIA GPU as reported by ``nvidia-smi`` (None when there is none or no driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    names_res = _run_quiet([exe, "--query-gpu=name", "--format=csv,noheader"])
    if names_res is None or names_res.returncode != 0:
        return None
    names = tuple(n.strip() for n in names_res.stdout.splitlines() if n.strip())
    if not names:
        return None
    cuda = None
    table = _run_quiet([exe])
    if table is not None and table.returncode == 0:
        m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", table.stdout)
        if m:
            cuda = (int(m.group(1)), int(m.group(2)))
    return GpuInfo(names, cuda)


def torch_index_url(gpu: GpuInfo | None, platform: str = sys.platform) -> str | None:
    """The pip index for torch: the newest CUDA build the driver supports, the CPU build
    otherwise; None on macOS (PyPI's wheels carry Apple MPS support)."""
    if platform == "darwin":
        return None
    if gpu is None:
        return f"{TORCH_INDEX}/cpu"
    usable = [b for b in CUDA_BUILDS if gpu.cuda is None or b <= gpu.cuda]
    if not usable:  # driver older than every published build: CPU is what will run
        return f"{TORCH_INDEX}/cpu"
    major, minor = usable[-1]
    return f"{TORCH_INDEX}/cu{major}{minor}"


def venv_python(venv_dir: str | Path, platform: str = sys.platform) -> Path:
    """The Python executable inside a virtual environment."""
    venv_dir = Path(venv_dir)
    if platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def default_venv_dir() -> Path:
    """Where the engine's environment goes by default: next to the QGIS profiles, outside
    every plugin folder (so plugin upgrades keep it)."""
    try:
        from qgis.core import QgsApplication

        base = Path(QgsApplication.qgisSettingsDirPath())
        return base.parent.parent / "satsynth-engine" if base.parent.name == "profiles" \
            else base / "satsynth-engine"
    except Exception:  # noqa: BLE001 - outside QGIS (tests, scripts)
        return Path.home() / ".satsynth" / "engine"


def default_engine_src() -> Path:
    """The engine source the zip carries, or the repository itself in a checkout."""
    packed = PLUGIN_DIR / "engine_src"
    if (packed / "pyproject.toml").is_file():
        return packed
    return PLUGIN_DIR.parent


# --- the plan -------------------------------------------------------------------------------
@dataclass
class Step:
    """One set-up step: a command (argument list) or an in-process action."""

    name: str
    argv: list[str] | None = None
    action: Callable[[], None] | None = None
    weight: float = 1.0
    advice: str = ""

    def describe(self) -> str:
        """The step as a user would type it (for the log)."""
        if self.argv is None:
            return self.name
        return " ".join(_quote(a) for a in self.argv)


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


@dataclass
class SetupPlan:
    """Everything the set-up will do, in order."""

    python: PythonInfo
    venv_dir: Path
    engine_src: Path
    torch_index: str | None
    gpu: GpuInfo | None
    steps: list[Step] = field(default_factory=list)

    @property
    def engine_python(self) -> Path:
        return venv_python(self.venv_dir)

    def summary(self) -> str:
        """A few lines a user can read before confirming."""
        device = (f"CUDA ({', '.join(self.gpu.names)}; driver supports CUDA "
                  f"{'.'.join(map(str, self.gpu.cuda)) if self.gpu.cuda else '?'})"
                  if self.gpu else "CPU (no NVIDIA GPU reported by nvidia-smi)")
        return "\n".join([
            f"Python used to create the environment: {self.python.path} "
            f"({self.python.version_text})",
            f"Engine environment: {self.venv_dir}",
            f"Engine source: {self.engine_src}",
            f"Torch build: {device}; index {self.torch_index or 'PyPI'}",
            "Steps: " + ", ".join(s.name for s in self.steps),
        ])


def build_plan(venv_dir: str | Path, engine_src: str | Path | None = None,
               python: PythonInfo | None = None, gpu: GpuInfo | None | str = "detect",
               platform: str = sys.platform, build_dir: str | Path | None = None) -> SetupPlan:
    """Plan the set-up: which Python, which torch index, and every command in order.

    ``gpu="detect"`` asks ``nvidia-smi``; pass a :class:`GpuInfo` or None to decide yourself.
    ``build_dir`` is where the engine source is copied before pip builds it (a fresh temporary
    folder by default), so the plugin folder stays clean.
    """
    venv_dir = Path(venv_dir).expanduser().absolute()
    src = Path(engine_src) if engine_src else default_engine_src()
    if not (src / "pyproject.toml").is_file():
        raise SetupError("find the engine source", f"{src} has no pyproject.toml.",
                         "Reinstall the plugin from its zip (it carries the engine in "
                         "engine_src/), or point the set-up to a SatSynth source checkout.")
    py = python or find_python()
    gpu_info = detect_gpu() if gpu == "detect" else gpu
    assert not isinstance(gpu_info, str)
    index = torch_index_url(gpu_info, platform)
    vpy = str(venv_python(venv_dir, platform))
    build = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / "satsynth-engine-build"
    build_src = build / "satsynth-src"
    broken = venv_dir.exists() and not venv_python(venv_dir, platform).exists()

    venv_args = [py.path, "-m", "venv"] + (["--clear"] if broken else []) + [str(venv_dir)]
    torch_args = [vpy, "-m", "pip", "install", "--upgrade"]
    if index:
        torch_args += ["--index-url", index]
    torch_args += list(TORCH_PACKAGES)

    def copy_source() -> None:
        _copy_engine_source(src, build_src)

    steps = [
        Step("create the environment", venv_args, weight=5,
             advice="On Debian/Ubuntu install the venv module ('apt install python3-venv'); "
                    "check that the folder is writable and the disk has a few GB free."),
        Step("update pip", [vpy, "-m", "pip", "install", "--upgrade", "pip"], weight=5,
             advice="Check the internet connection (pypi.org must be reachable, also through "
                    "a proxy: set HTTPS_PROXY before starting QGIS)."),
        Step("install torch", torch_args, weight=60,
             advice="Check the internet connection to download.pytorch.org and that a few GB "
                    "are free; re-run the set-up (it resumes where it failed)."),
        Step("copy the engine source", action=copy_source, weight=1,
             advice="Check that the temporary folder is writable."),
        Step("install the SatSynth engine",
             [vpy, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed",
              str(build_src)], weight=25,
             advice="Check the internet connection (pypi.org); the log above shows which "
                    "package failed."),
        Step("check the engine", [vpy, "-m", "satsynth", "check", "--progress", "json"],
             weight=4,
             advice="The environment is incomplete: re-run the set-up, which repairs it."),
    ]
    return SetupPlan(py, venv_dir, src, index, gpu_info, steps)


def _copy_engine_source(src: Path, dest: Path) -> None:
    """Copy only what pip needs to build the engine (no caches, no egg-info)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "README.md", "LICENSE"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if not (dest / "README.md").exists():  # pyproject.toml names it as the readme
        (dest / "README.md").write_text("SatSynth engine\n", encoding="utf-8")
    shutil.copytree(src / "engine" / "satsynth", dest / "engine" / "satsynth",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info"))


# --- running it -----------------------------------------------------------------------------
_PIP_EVENT = re.compile(r"^(Collecting|Downloading|Installing collected packages|Building wheel|"
                        r"Successfully installed|Requirement already satisfied)\b")


def run_plan(plan: SetupPlan, on_line: LineSink | None = None,
             on_progress: ProgressSink | None = None,
             is_cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Execute the plan; returns the engine's ``check`` report. Raises :class:`SetupError` naming
    the failing step, or :class:`SetupCancelled`."""
    log = on_line or (lambda _s: None)
    progress = on_progress or (lambda _f, _m: None)
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
                raise SetupError(step.name, str(exc), step.advice) from None
        else:
            assert step.argv is not None
            lines = _stream(step, log, is_cancelled,
                            lambda k, msg, d=done, w=step.weight: progress(
                                (d + w * (1 - 0.8 ** k) * 0.9) / total, msg))
            if step.name == "check the engine":
                report = _parse_check(lines, step)
        done += step.weight
    progress(1.0, "engine ready")
    return report


def _stream(step: Step, log: LineSink, is_cancelled: Callable[[], bool],
            sub_progress: Callable[[int, str], None]) -> list[str]:
    """Run one command, relaying its output line by line; raises SetupError on failure."""
    assert step.argv is not None
    try:
        proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                                errors="replace", bufsize=1, env=clean_env(), **_no_window())
    except OSError as exc:
        raise SetupError(step.name, f"cannot start {step.argv[0]} ({exc}).", step.advice) from None
    lines: list[str] = []
    events = 0
    import threading

    def _watch() -> None:  # stop the child when the user cancels, even while it is silent
        while proc.poll() is None:
            if is_cancelled():
                _stop(proc)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=_watch, daemon=True)
    watcher.start()
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\r\n")
        if not line:
            continue
        lines.append(line)
        log(line)
        if _PIP_EVENT.match(line):
            events += 1
            sub_progress(events, f"{step.name}: {line[:80]}")
    rc = proc.wait()
    watcher.join(timeout=1)
    if is_cancelled():
        raise SetupCancelled()
    if rc != 0:
        tail = next((ln for ln in reversed(lines) if ln.strip().lower().startswith("error")),
                    lines[-1] if lines else "no output")
        raise SetupError(step.name, f"'{step.describe()}' exited with code {rc}: {tail}",
                         step.advice)
    return lines


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def _parse_check(lines: list[str], step: Step) -> dict[str, Any]:
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "done":
            return dict(event.get("outputs") or {})
    raise SetupError(step.name, "the engine did not report its version and device.", step.advice)


# --- inside QGIS ----------------------------------------------------------------------------
def record_engine(python_path: str | Path) -> None:
    """Remember the new environment's Python as the engine setting."""
    from .runner import set_engine_setting

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
                return False
            except Exception as exc:  # noqa: BLE001 - show anything else, with its type
                self.error = f"Set up engine failed: {exc.__class__.__name__}: {exc}"
                return False
            return True

        def finished(self, ok: bool) -> None:
            if ok and self.record:
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
