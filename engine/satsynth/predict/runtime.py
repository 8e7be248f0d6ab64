"""Which forward runs the model in ``predict`` (``--runtime``): PyTorch or ONNX Runtime, chosen in
one place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from satsynth.contract import RUNTIMES
from satsynth.errors import SatSynthError
from satsynth.predict.forward import Forward, TorchForward
from satsynth.predict.onnx_runtime import OnnxForward, onnx_available

log = logging.getLogger("satsynth")


def select_forward(runtime: str, model_dir: str | Path, model: Any, cfg: Any, device: Any,
                   overlap: int) -> Forward:
    """The forward for ``--runtime``: ``torch``; ``onnx`` (ONNX Runtime, a clear error when it is
    not installed); ``auto``: ONNX Runtime on a CPU device when it is installed, else PyTorch."""
    if runtime not in RUNTIMES:
        raise SatSynthError(f"--runtime {runtime}: choose from {', '.join(RUNTIMES)}")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_available()):
        log.info("forward: ONNX Runtime")
        return OnnxForward(model_dir, model, cfg, device, overlap)
    log.info("forward: PyTorch%s", "" if runtime == "torch" or not on_cpu else
             " (onnxruntime is not installed)")
    return TorchForward(model, device, amp=getattr(device, "type", None) == "cuda")
