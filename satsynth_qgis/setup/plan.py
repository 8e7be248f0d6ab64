"""The set-up as plain data: which Python, which torch index, and every step in order, so it can
be shown to the user and tested without running it (:mod:`.run` executes it)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .errors import SetupError
from .gpu import GpuInfo, detect_gpu, torch_source
from .places import (
    FREE_BYTES_CPU,
    FREE_BYTES_CUDA,
    check_disk_space,
    copy_engine_source,
    default_engine_src,
    move_into_place,
    staging_dir_for,
)
from .python import PythonInfo, find_python, venv_python

#: The name of the steps that fetch encoder weights (``build_plan(weights=...)``) starts so.
FETCH_STEP = "fetch encoder weights"
#: The step whose output is the engine's ``check`` report.
CHECK_STEP = "check the engine"


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


@dataclass(frozen=True)
class _Places:
    """The folders the steps work in, and the Pythons they run."""

    creator: str  # the Python that creates the environment
    venv_dir: Path
    staging: Path
    src: Path
    build_src: Path
    platform: str

    @property
    def staging_python(self) -> str:
        return str(venv_python(self.staging, self.platform))

    @property
    def final_python(self) -> str:
        return str(venv_python(self.venv_dir, self.platform))


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
    _check_folders(venv_dir, src)
    py = python or find_python()
    gpu_info = detect_gpu() if gpu == "detect" else gpu
    assert not isinstance(gpu_info, str)
    index, packages = torch_source(gpu_info, platform, environ)
    build = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / "satsynth-engine-build"
    places = _Places(py.path, venv_dir, staging_dir_for(venv_dir), src, build / "satsynth-src",
                     platform)
    needed = FREE_BYTES_CUDA if (gpu_info is not None and index and "/cu" in index) \
        else FREE_BYTES_CPU
    torchgeo = any(name.startswith("torchgeo:") for name, _ in weights)
    steps = [Step("check free disk space", action=partial(check_disk_space, venv_dir, needed),
                  weight=1),
             *_install_steps(places, index, packages, torchgeo)]
    if platform == "win32":  # .exe launchers carry their Python's path inside: write them anew
        steps.append(Step(
            "refresh the command-line launchers",
            [places.final_python, "-m", "pip", "install", "--force-reinstall", "--no-deps",
             str(places.build_src)], weight=3,
            advice="The engine works (the plugin runs it as python -m satsynth); re-run the "
                   "set-up for the satsynth.exe command."))
    # last: the environment is in place even when a download fails
    steps += _fetch_steps(places, weights)
    return SetupPlan(py, venv_dir, src, index, gpu_info, steps, places.staging)


def _check_folders(venv_dir: Path, src: Path) -> None:
    """The engine source has its pyproject.toml; the environment folder is not a file."""
    if not (src / "pyproject.toml").is_file():
        raise SetupError("find the engine source", f"{src} has no pyproject.toml.",
                         "Reinstall the plugin from its zip (it carries the engine in "
                         "engine_src/), or point the set-up to a SatSynth source checkout.")
    if venv_dir.exists() and not venv_dir.is_dir():
        raise SetupError("choose the environment folder", f"{venv_dir} is a file.",
                         "Choose a folder (it is created when missing).")


def _install_steps(places: _Places, index: str | None, packages: list[str],
                   torchgeo: bool) -> list[Step]:
    """Create the environment in the staging folder, install torch and the engine, check it and
    move it into place."""
    vpy = places.staging_python
    # --clear: a staging folder left by a crashed QGIS is started afresh
    venv_args = [places.creator, "-m", "venv", "--clear", str(places.staging)]
    torch_args = [vpy, "-m", "pip", "install", "--upgrade"]
    if index:
        torch_args += ["--index-url", index]
    torch_args += packages
    return [
        Step("create the environment", venv_args, weight=5,
             advice="On Debian/Ubuntu install the venv module ('apt install python3-venv'); "
                    "check that the folder is writable and the disk has a few GB free."),
        Step("update pip", [vpy, "-m", "pip", "install", "--upgrade", "pip"], weight=5,
             advice="Check the internet connection (pypi.org must be reachable, also through "
                    "a proxy: set HTTPS_PROXY before starting QGIS)."),
        Step("install torch", torch_args, weight=60,
             advice=f"Check the internet connection to {index or 'the package index'} and that "
                    "a few GB are free, then re-run the set-up (pip keeps what it downloaded)."),
        Step("copy the engine source",
             action=partial(copy_engine_source, places.src, places.build_src), weight=1,
             advice="Check that the temporary folder is writable."),
        Step("install the SatSynth engine",
             [vpy, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed",
              str(places.build_src) + ("[torchgeo]" if torchgeo else "")], weight=25,
             advice="Check the internet connection (pypi.org); the log above shows which "
                    "package failed."),
        Step(CHECK_STEP, [vpy, "-m", "satsynth", "check", "--progress", "json"], weight=4,
             advice="The new environment is incomplete and was not used: re-run the set-up."),
        Step("put the environment in place",
             action=partial(move_into_place, places.staging, places.venv_dir, places.platform),
             weight=1,
             advice="Check that the environment folder is writable and no program is using it."),
    ]


def _fetch_steps(places: _Places, weights: Sequence[tuple[str, str]]) -> list[Step]:
    """One ``satsynth fetch-weights`` per (name, encoder), run by the environment in place."""
    return [
        Step(f"{FETCH_STEP} {name} ({encoder})",
             [places.final_python, "-m", "satsynth", "fetch-weights", name,
              "--encoder", encoder, "--progress", "json"], weight=5,
             advice="Check the internet connection (huggingface.co / hf.co must be reachable), "
                    "then run the set-up again; the engine itself is installed.")
        for name, encoder in weights]
