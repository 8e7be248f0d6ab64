"""The model's forward pass for ``predict``: PyTorch or ONNX Runtime, chosen in one place.

A forward takes a batch of normalized tiles ``(N, C, h, w)`` (numpy float32) and returns their
class probabilities ``(N, K, h, w)`` as a float32 torch tensor on the prediction device; the
streaming, blending and writing around it are the same for both runtimes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

RUNTIMES = ("auto", "torch", "onnx")


class Forward(ABC):
    """Class probabilities of a batch of normalized tiles; ``name`` is the runtime's."""

    name = ""

    @abstractmethod
    def __call__(self, x: np.ndarray) -> Any:
        """``(N, C, h, w)`` normalized tiles -> ``(N, K, h, w)`` float32 probabilities."""


class TorchForward(Forward):
    """The PyTorch model's class probabilities (AMP float16 with ``amp``, on CUDA)."""

    name = "torch"

    def __init__(self, model: Any, device: Any, amp: bool) -> None:
        self.model, self.device, self.amp = model, device, amp

    def __call__(self, x: np.ndarray) -> Any:
        import torch

        xt = torch.from_numpy(x).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext():
            logits = self.model(xt)
        return torch.softmax(logits.float(), dim=1)


def select_forward(runtime: str, model_dir: str | Path, model: Any, cfg: Any, device: Any,
                   overlap: int) -> Forward:
    """The forward for ``--runtime``: ``torch``; ``onnx`` (ONNX Runtime, a clear error when it is
    not installed); ``auto``: ONNX Runtime on a CPU device when it is installed, else PyTorch."""
    from satsynth.predict.onnx_runtime import OnnxForward, onnx_available

    if runtime not in RUNTIMES:
        raise SatSynthError(f"--runtime {runtime}: choose from {', '.join(RUNTIMES)}")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_available()):
        log.info("forward: ONNX Runtime")
        return OnnxForward(model_dir, model, cfg, device, overlap)
    log.info("forward: PyTorch%s", "" if runtime == "torch" or not on_cpu else
             " (onnxruntime is not installed)")
    return TorchForward(model, device, amp=getattr(device, "type", None) == "cuda")
