"""The machine's NVIDIA GPU (as ``nvidia-smi`` reports it) and the torch build that fits it."""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass

from ..process import run_captured

TORCH_INDEX = "https://download.pytorch.org/whl"
#: CUDA builds published on the PyTorch index, oldest first; the newest one the driver supports wins.
CUDA_BUILDS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8))
TORCH_PACKAGES = ("torch", "torchvision")
#: Environment variables that point the set-up to another torch source (a company mirror or a
#: local wheelhouse): a pip index URL, or "pypi" for pip's own configuration; and the torch
#: requirements to install (space separated, e.g. "torch==2.5.1 torchvision==0.20.1").
TORCH_INDEX_ENV = "SATSYNTH_TORCH_INDEX"
TORCH_PACKAGES_ENV = "SATSYNTH_TORCH_PACKAGES"


@dataclass(frozen=True)
class GpuInfo:
    """What ``nvidia-smi`` reports: GPU names and the newest CUDA version the driver supports."""

    names: tuple[str, ...]
    cuda: tuple[int, int] | None


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
