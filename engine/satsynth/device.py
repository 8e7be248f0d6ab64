"""Choosing the compute device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")


def resolve_device(name: str = "auto") -> Any:
    """The torch device for ``--device name``: 'auto' picks CUDA, then Apple MPS, then the CPU.

    Args:
        name (`str`, *optional*, defaults to `"auto"`):
            ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        `torch.device`: the device.

    Raises:
        `SatSynthError`: the device asked for is missing, or the name is unknown.
    """
    import torch

    from satsynth.threads import report_choice

    report_choice()
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
    """Engine environment facts for 'satsynth check' and the QGIS plugin.

    Returns:
        `dict[str, Any]`: the SatSynth, Python and torch versions, the executable and platform, the
        device ``auto`` picks and its GPU name, the CUDA device count, torch's thread count, and
        the versions of diffusers, smp, rasterio, geopandas and accelerate (``missing (...)`` for
        one that does not import).
    """
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


@dataclass(frozen=True)
class Capability:
    """What a device computes fast: its type (cpu, cuda, mps), bf16 and fp16 arithmetic."""

    kind: str
    bf16: bool
    fp16: bool
    name: str = ""


#: /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic (AVX512-BF16; AMX tiles).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing: not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def capability(device: Any) -> Capability:
    """The device's fast number formats.

    A CPU has bf16 with AVX512-BF16 or AMX (Linux flags, or oneDNN's own check elsewhere), a CUDA
    GPU where torch says it supports bf16, fp16 from compute capability 7.0 (tensor cores); MPS is
    treated as float32 only.

    Args:
        device (`torch.device`):
            The device to describe.

    Returns:
        `Capability`: its type and whether bf16 and fp16 arithmetic are fast on it.
    """
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        try:  # native bf16 only: older GPUs emulate it, slower than float32
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = torch.cuda.is_bf16_supported()
        return Capability("cuda", bool(bf16), major >= 7,
                          torch.cuda.get_device_name(device))
    if kind == "cpu":
        flags = cpu_flags()
        if flags:
            bf16 = any(f in flags for f in CPU_BF16_FLAGS)
        else:
            check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
            bf16 = bool(check()) if check is not None else False
        return Capability("cpu", bf16, False, "CPU with bf16" if bf16 else "CPU")
    return Capability(kind, False, False, kind)


def choose_mixed_precision(asked: str, cap: Capability) -> str:
    """The autocast format for ``--mixed-precision asked`` on a device of capability ``cap``.

    ``auto`` takes bf16 where the device has it, else fp16 where that is fast, else ``no``
    (float32); an explicit ``fp16`` falls back to float32 off a GPU (a CPU has no fast fp16), an
    explicit ``bf16`` is honoured (slow where the device lacks it, with a warning).

    Args:
        asked (`str`):
            ``auto``, ``no``, ``fp16`` or ``bf16`` (:data:`satsynth.contract.MIXED_PRECISIONS`).
        cap (`Capability`):
            The device's capability (:func:`capability`).

    Returns:
        `str`: ``no``, ``fp16`` or ``bf16``, as Accelerate's ``mixed_precision`` takes it.
    """
    if asked == "auto":
        return "bf16" if cap.bf16 else "fp16" if cap.fp16 else "no"
    if asked == "fp16" and cap.kind != "cuda":
        log.warning("--mixed-precision fp16 needs a CUDA GPU; computing in float32 on %s",
                    cap.kind)
        return "no"
    if asked == "bf16" and not cap.bf16:
        log.warning("--mixed-precision bf16: this %s has no fast bf16 arithmetic; bf16 will be "
                    "emulated and slower than float32 (use auto or no)", cap.kind)
    return asked


def mixed_precision_for(asked: str, device: Any) -> str:
    """:func:`choose_mixed_precision` on ``device``'s capability, logged.

    Args:
        asked (`str`):
            ``auto``, ``no``, ``fp16`` or ``bf16``.
        device (`torch.device`):
            The device training runs on.

    Returns:
        `str`: ``no``, ``fp16`` or ``bf16``.
    """
    cap = capability(device)
    mp = choose_mixed_precision(asked, cap)
    log.info("mixed precision: %s (asked %s; %s)", "float32" if mp == "no" else mp + " autocast",
             asked, cap.name or cap.kind)
    return mp
