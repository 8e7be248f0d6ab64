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

This module is the action's public face; the work is done in :mod:`satsynth_qgis.setup`, one job
per module (Python discovery, GPU and torch build, places and moving, the plan, pip's diagnosis,
running, the QGIS task).
"""

from __future__ import annotations

from .setup.errors import SetupCancelled, SetupError
from .setup.gpu import (
    CUDA_BUILDS,
    TORCH_INDEX,
    TORCH_INDEX_ENV,
    TORCH_PACKAGES,
    TORCH_PACKAGES_ENV,
    GpuInfo,
    detect_gpu,
    torch_index_url,
    torch_source,
)
from .setup.places import (
    FREE_BYTES_CPU,
    FREE_BYTES_CUDA,
    check_disk_space,
    default_engine_src,
    default_venv_dir,
    move_into_place,
    staging_dir_for,
)
from .setup.plan import FETCH_STEP, SetupPlan, Step, build_plan
from .setup.python import (
    MIN_PYTHON,
    PythonInfo,
    find_python,
    probe_python,
    python_candidates,
    venv_python,
)
from .setup.run import GRACE_SECONDS, PIP_ENV, LineSink, ProgressSink, run_plan
from .setup.task import record_engine, setup_task

__all__ = [
    "CUDA_BUILDS", "FETCH_STEP", "FREE_BYTES_CPU", "FREE_BYTES_CUDA", "GRACE_SECONDS",
    "MIN_PYTHON", "PIP_ENV", "TORCH_INDEX", "TORCH_INDEX_ENV", "TORCH_PACKAGES",
    "TORCH_PACKAGES_ENV", "GpuInfo", "LineSink", "ProgressSink", "PythonInfo", "SetupCancelled",
    "SetupError", "SetupPlan", "Step", "build_plan", "check_disk_space", "default_engine_src",
    "default_venv_dir", "detect_gpu", "find_python", "move_into_place", "probe_python",
    "python_candidates", "record_engine", "run_plan", "setup_task", "staging_dir_for",
    "torch_index_url", "torch_source", "venv_python",
]
