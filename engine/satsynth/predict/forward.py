"""The model's forward pass for ``predict``: what every runtime's forward does, and PyTorch's.

A forward takes a batch of normalized tiles ``(N, C, h, w)`` (numpy float32) and returns their
class probabilities ``(N, K, h, w)`` as a float32 torch tensor on the prediction device; the
streaming, blending and writing around it are the same for every runtime
(:mod:`~satsynth.predict.runtime` chooses one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any

import numpy as np


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
