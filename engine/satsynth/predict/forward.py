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


def pad_to_tile(x: np.ndarray, tile: int | None) -> np.ndarray:
    """Tiles smaller than ``tile`` (a raster smaller than one tile) padded up to it by
    reflection, so that every runtime sees the same input whatever the raster's size; callers
    crop the probabilities back to the tile's own ``h, w``."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    th, tw = (max(h, tile), max(w, tile)) if tile else (h, w)
    if (th, tw) == (h, w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, th - h), (0, tw - w)), mode="reflect")


class TorchForward(Forward):
    """The PyTorch model's class probabilities (AMP float16 with ``amp``, on CUDA); tiles
    smaller than ``tile`` are padded up to it as in every runtime (:func:`pad_to_tile`)."""

    name = "torch"

    def __init__(self, model: Any, device: Any, amp: bool, tile: int | None = None) -> None:
        self.model, self.device, self.amp, self.tile = model, device, amp, tile

    def __call__(self, x: np.ndarray) -> Any:
        import torch

        h, w = int(x.shape[-2]), int(x.shape[-1])
        xt = torch.from_numpy(np.ascontiguousarray(pad_to_tile(x, self.tile))).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext():
            logits = self.model(xt)
        return torch.softmax(logits.float(), dim=1)[..., :h, :w]
