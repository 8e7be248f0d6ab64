"""Choosing the compute device."""

from __future__ import annotations

from typing import Any

from satsynth.errors import SatSynthError


def resolve_device(name: str = "auto") -> Any:
    """'auto' picks CUDA, then Apple MPS, then the CPU; asking for a missing one is an error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SatSynthError("--device cuda was asked for, but torch sees no CUDA GPU "
                            "(use --device cpu or install a CUDA build of torch)")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise SatSynthError("--device mps was asked for, but Apple MPS is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SatSynthError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None


def describe() -> dict[str, Any]:
    """Engine environment facts for 'satsynth check' and the QGIS plugin."""
    import platform
    import sys

    import torch

    from satsynth import __version__

    dev = resolve_device("auto")
    info: dict[str, Any] = {
        "satsynth": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": dev.type,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "threads": torch.get_num_threads(),
    }
    for mod in ("diffusers", "segmentation_models_pytorch", "rasterio", "geopandas", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            info[mod] = f"missing ({exc.__class__.__name__})"
    return info
