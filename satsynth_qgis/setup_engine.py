"""The "Set up engine" action: make a separate Python environment with the SatSynth engine.

QGIS's own Python is never touched: a Python >= 3.10 found on the system (or chosen by the user)
creates a virtual environment, pip installs a torch build that fits the machine (CUDA when
``nvidia-smi`` reports a GPU, the CPU build otherwise) and then the engine source carried in the
plugin zip (``engine_src/``). The environment is built in a staging folder beside the chosen one
and moved into place only once the engine inside it has passed ``satsynth check``: a failed or
cancelled set-up (no network, a full disk, a Python that is too old) leaves the chosen folder as it
was and removes the staging folder, and the engine setting is recorded only on success. Re-running it
repairs or upgrades the environment (pip's cache makes the second download cheap). Every step is an
argument list (never a shell), so paths with spaces work; a failing step is named in the error
together with what to do about it.

The plan (:func:`build_plan`) is plain data, so it can be shown to the user and tested without
running it; :func:`run_plan` executes it and streams pip's output line by line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import contract
from .process import run_captured, run_streaming

MIN_PYTHON = (3, 10)
TORCH_INDEX = "https://download.pytorch.org/whl"
#: CUDA builds published on the PyTorch index, oldest first; the newest one the driver supports wins.
CUDA_BUILDS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8))
TORCH_PACKAGES = ("torch", "torchvision")
#: Free disk space the set-up asks for before it starts (the environment, pip's unpacking and its
#: cache): torch's CPU build makes an environment of about 1.5 GB, a CUDA build 5-6 GB.
FREE_BYTES_CPU = 4 * 1024**3
FREE_BYTES_CUDA = 12 * 1024**3
#: Environment variables that point the set-up to another torch source (a company mirror or a
#: local wheelhouse): a pip index URL, or "pypi" for pip's own configuration; and the torch
#: requirements to install (space separated, e.g. "torch==2.5.1 torchvision==0.20.1").
TORCH_INDEX_ENV = "SATSYNTH_TORCH_INDEX"
TORCH_PACKAGES_ENV = "SATSYNTH_TORCH_PACKAGES"
#: What pip is told in every step: no version-check notice, never wait for input.
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
#: Seconds between asking a step's command to stop (SIGTERM) and killing it.
GRACE_SECONDS = 5.0
PLUGIN_DIR = Path(__file__).resolve().parent

LineSink = Callable[[str], None]
ProgressSink = Callable[[float, str], None]


#: The name of the steps that fetch encoder weights (``build_plan(weights=...)``) starts so.
FETCH_STEP = "fetch encoder weights"


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


def detect_gpu() -> GpuInfo | None:
    """An NVIDIA GPU as reported by ``nvidia-smi`` (None when there is none or no driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    names_res = run_captured([exe, "--query-gpu=name", "--format=csv,noheader"])
    if names_res is None or names_res.returncode != 0:
        return None
    names = tuple(n.strip() for n in names_res.stdout.splitlines() if n.strip())
    if not names:
        return None
    cuda = None
    table = run_captured([exe])
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
    #: where the environment is built before it is moved to ``venv_dir`` (None: built in place)
    staging_dir: Path | None = None

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
            f"Engine environment: {self.venv_dir}"
            + (f" (built in {self.staging_dir}, moved there when complete)"
               if self.staging_dir else ""),
            f"Engine source: {self.engine_src}",
            f"Torch build: {device}; index {self.torch_index or 'PyPI'}",
            "Steps: " + ", ".join(s.name for s in self.steps),
        ])


def staging_dir_for(venv_dir: Path) -> Path:
    """The folder the environment is built in before it replaces ``venv_dir`` (a hidden sibling,
    so the final move is a rename on the same disk)."""
    return venv_dir.with_name(f".{venv_dir.name}.satsynth-setup")


def torch_source(gpu: GpuInfo | None, platform: str = sys.platform,
                 environ: dict[str, str] | None = None) -> tuple[str | None, list[str]]:
    """The pip index (None: pip's own configuration) and the requirements for torch: what
    :func:`torch_index_url` chooses, unless :data:`TORCH_INDEX_ENV` / :data:`TORCH_PACKAGES_ENV`
    say otherwise."""
    env = os.environ if environ is None else environ
    index = torch_index_url(gpu, platform)
    chosen = env.get(TORCH_INDEX_ENV, "").strip()
    if chosen:
        index = None if chosen.lower() == "pypi" else chosen
    packages = env.get(TORCH_PACKAGES_ENV, "").split() or list(TORCH_PACKAGES)
    return index, packages


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(folder: Path, needed: int) -> None:
    """Raise :class:`SetupError` when the disk that will hold ``folder`` has less than ``needed``
    bytes free."""
    where = _nearest_existing(folder)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        raise SetupError("check free disk space", f"cannot read the free space of {where} "
                         f"({exc}).", "Choose an environment folder on a local disk.") from None
    if free < needed:
        raise SetupError("check free disk space",
                         f"{where} has {free / 1024**3:.1f} GB free; the engine's environment "
                         f"needs about {needed / 1024**3:.0f} GB.",
                         "Free some space, or choose an environment folder on another disk.")


def build_plan(venv_dir: str | Path, engine_src: str | Path | None = None,
               python: PythonInfo | None = None, gpu: GpuInfo | None | str = "detect",
               platform: str = sys.platform, build_dir: str | Path | None = None,
               environ: dict[str, str] | None = None,
               weights: Sequence[tuple[str, str]] = ()) -> SetupPlan:
    """Plan the set-up: which Python, which torch index, and every command in order.

    ``gpu="detect"`` asks ``nvidia-smi``; pass a :class:`GpuInfo` or None to decide yourself.
    ``build_dir`` is where the engine source is copied before pip builds it (a fresh temporary
    folder by default), so the plugin folder stays clean. The environment itself is built in
    :func:`staging_dir_for` and moved to ``venv_dir`` by the last step. ``environ`` (default
    ``os.environ``) may override the torch source (:func:`torch_source`). ``weights`` are
    (``--encoder-weights`` name, encoder) pairs fetched into their cache once the engine works
    (``satsynth fetch-weights``), so that training from them later works offline; TorchGeo
    weights also install the engine's ``torchgeo`` extra.
    """
    venv_dir = Path(venv_dir).expanduser().absolute()
    src = Path(engine_src) if engine_src else default_engine_src()
    if not (src / "pyproject.toml").is_file():
        raise SetupError("find the engine source", f"{src} has no pyproject.toml.",
                         "Reinstall the plugin from its zip (it carries the engine in "
                         "engine_src/), or point the set-up to a SatSynth source checkout.")
    if venv_dir.exists() and not venv_dir.is_dir():
        raise SetupError("choose the environment folder", f"{venv_dir} is a file.",
                         "Choose a folder (it is created when missing).")
    py = python or find_python()
    gpu_info = detect_gpu() if gpu == "detect" else gpu
    assert not isinstance(gpu_info, str)
    index, packages = torch_source(gpu_info, platform, environ)
    staging = staging_dir_for(venv_dir)
    vpy = str(venv_python(staging, platform))
    build = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / "satsynth-engine-build"
    build_src = build / "satsynth-src"
    needed = FREE_BYTES_CUDA if (gpu_info is not None and index and "/cu" in index) \
        else FREE_BYTES_CPU

    # --clear: a staging folder left by a crashed QGIS is started afresh
    venv_args = [py.path, "-m", "venv", "--clear", str(staging)]
    torch_args = [vpy, "-m", "pip", "install", "--upgrade"]
    if index:
        torch_args += ["--index-url", index]
    torch_args += packages

    def copy_source() -> None:
        _copy_engine_source(src, build_src)

    torchgeo = any(name.startswith("torchgeo:") for name, _ in weights)
    fetch_steps = [
        Step(f"{FETCH_STEP} {name} ({encoder})",
             [str(venv_python(venv_dir, platform)), "-m", "satsynth", "fetch-weights", name,
              "--encoder", encoder, "--progress", "json"], weight=5,
             advice="Check the internet connection (huggingface.co / hf.co must be reachable), "
                    "then run the set-up again; the engine itself is installed.")
        for name, encoder in weights]

    def put_in_place() -> None:
        move_into_place(staging, venv_dir, platform)

    steps = [
        Step("check free disk space", action=lambda: check_disk_space(venv_dir, needed),
             weight=1),
        Step("create the environment", venv_args, weight=5,
             advice="On Debian/Ubuntu install the venv module ('apt install python3-venv'); "
                    "check that the folder is writable and the disk has a few GB free."),
        Step("update pip", [vpy, "-m", "pip", "install", "--upgrade", "pip"], weight=5,
             advice="Check the internet connection (pypi.org must be reachable, also through "
                    "a proxy: set HTTPS_PROXY before starting QGIS)."),
        Step("install torch", torch_args, weight=60,
             advice=f"Check the internet connection to {index or 'the package index'} and that "
                    "a few GB are free, then re-run the set-up (pip keeps what it downloaded)."),
        Step("copy the engine source", action=copy_source, weight=1,
             advice="Check that the temporary folder is writable."),
        Step("install the SatSynth engine",
             [vpy, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed",
              str(build_src) + ("[torchgeo]" if torchgeo else "")], weight=25,
             advice="Check the internet connection (pypi.org); the log above shows which "
                    "package failed."),
        Step("check the engine", [vpy, "-m", "satsynth", "check", "--progress", "json"],
             weight=4,
             advice="The new environment is incomplete and was not used: re-run the set-up."),
        Step("put the environment in place", action=put_in_place, weight=1,
             advice="Check that the environment folder is writable and no program is using it."),
    ]
    if platform == "win32":  # .exe launchers carry their Python's path inside: write them anew
        steps.append(Step(
            "refresh the command-line launchers",
            [str(venv_python(venv_dir, platform)), "-m", "pip", "install", "--force-reinstall",
             "--no-deps", str(build_src)], weight=3,
            advice="The engine works (the plugin runs it as python -m satsynth); re-run the "
                   "set-up for the satsynth.exe command."))
    steps += fetch_steps  # last: the environment is in place even when a download fails
    return SetupPlan(py, venv_dir, src, index, gpu_info, steps, staging)


def move_into_place(staging: Path, venv_dir: Path, platform: str = sys.platform) -> None:
    """Replace ``venv_dir`` by the finished environment in ``staging``: the old one (if any) is
    renamed aside first and removed only once the new one is in place. Console scripts (pip,
    satsynth) name their Python by absolute path, so that path is rewritten (Windows' .exe
    launchers are written anew by the plan's last step)."""
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    old = venv_dir.with_name(f".{venv_dir.name}.satsynth-old")
    if old.exists():
        shutil.rmtree(old)
    if venv_dir.exists():
        venv_dir.rename(old)
    try:
        staging.rename(venv_dir)
    except OSError:
        if old.exists():
            old.rename(venv_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _retarget_scripts(venv_dir, staging, platform)


def _retarget_scripts(venv_dir: Path, staging: Path, platform: str) -> None:
    scripts = venv_dir / ("Scripts" if platform == "win32" else "bin")
    old_prefix, new_prefix = str(staging).encode(), str(venv_dir).encode()
    for f in scripts.iterdir() if scripts.is_dir() else []:
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if old_prefix not in data or (platform == "win32" and f.suffix == ".exe"):
            continue
        if data.startswith(b"#!") or f.name.startswith("activate"):
            f.write_bytes(data.replace(old_prefix, new_prefix))


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
                problem = ("the disk is full." if _is_disk_full(str(exc)) else str(exc))
                raise SetupError(step.name, problem, step.advice) from None
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


#: pip's and the OS's words for "no network" and "disk full", and what the user is told instead
_NETWORK_WORDS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "Connection refused",
                  "No route to host", "Max retries exceeded", "ConnectTimeoutError",
                  "Read timed out", "getaddrinfo failed", "ProxyError")


def _is_disk_full(text: str) -> bool:
    return "No space left on device" in text or "[Errno 28]" in text \
        or "There is not enough space on the disk" in text


def _diagnosis(lines: list[str]) -> str:
    """One sentence on what pip's output says went wrong ('' when it says nothing known)."""
    text = "\n".join(lines[-200:])
    if _is_disk_full(text):
        return "The disk is full (No space left on device)."
    if any(w in text for w in _NETWORK_WORDS):
        return "The package index could not be reached: no network connection, or a proxy is needed."
    return ""


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
        if _PIP_EVENT.match(line):
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
        diagnosis = _diagnosis(lines)
        raise SetupError(step.name, (f"{diagnosis} " if diagnosis else "")
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
