"""Label masks as model channels: analog bits (default) or one-hot, and back.

Analog bits (Chen et al. 2022, used by SatSynth): class index ``k`` becomes the ``B = ceil(log2 K)``
bits of ``k`` written as +-1 values. Decoding picks, per pixel, the valid code (index < K) nearest
to the analog vector; for a vector whose thresholded code is valid that is exactly thresholding at 0,
otherwise it is the nearest valid code, and those pixels are counted as *invalid codes*.
One-hot uses K channels of +-1 and decodes by argmax. Ignore pixels (255) are encoded as all zeros
(the midpoint) and are left out of the label loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from satsynth.data.classes import IGNORE_INDEX
from satsynth.errors import SatSynthError

ENCODINGS = ("bits", "onehot")


def bit_count(num_classes: int) -> int:
    """Number of analog-bit channels for K classes (at least 1)."""
    return max(1, math.ceil(math.log2(max(num_classes, 2))))


@dataclass(frozen=True)
class LabelEncoding:
    """How K class indices map to label channels of +-1."""

    kind: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise SatSynthError(f"unknown label encoding {self.kind!r}: use bits or onehot")
        if not 1 <= self.num_classes <= 254:
            raise SatSynthError(f"label encoding needs 1..254 classes, got {self.num_classes}")

    @property
    def channels(self) -> int:
        """Number of model channels used by the label."""
        return bit_count(self.num_classes) if self.kind == "bits" else self.num_classes

    def codebook(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(K, channels) float tensor of +-1: the code of every valid class index."""
        k = torch.arange(self.num_classes, device=device)
        if self.kind == "bits":
            shifts = torch.arange(self.channels - 1, -1, -1, device=device)  # MSB first
            bits = (k[:, None] >> shifts[None, :]) & 1
        else:
            bits = torch.nn.functional.one_hot(k, self.num_classes)
        return bits.float() * 2.0 - 1.0

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        """(N,H,W) or (H,W) integer class indices -> (N,C,H,W)/(C,H,W) float of +-1 (0 at ignore)."""
        squeeze = mask.dim() == 2
        m = mask[None] if squeeze else mask
        m = m.long()
        ignore = m == IGNORE_INDEX
        if bool(((m >= self.num_classes) & ~ignore).any()):
            bad = int(m[(m >= self.num_classes) & ~ignore].max())
            raise SatSynthError(f"label index {bad} is outside 0..{self.num_classes - 1}")
        book = self.codebook(m.device)
        codes = book[m.clamp(max=self.num_classes - 1)]  # (N,H,W,C)
        codes = codes.masked_fill(ignore[..., None], 0.0).permute(0, 3, 1, 2).contiguous()
        return codes[0] if squeeze else codes

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(N,C,H,W) analog label channels -> ((N,H,W) uint8 class indices, invalid-code count)."""
        x = x.float()
        book = self.codebook(x.device)  # (K, C)
        scores = torch.einsum("nchw,kc->nkhw", x, book)
        index = scores.argmax(1)
        invalid = 0
        if self.kind == "bits":
            shifts = torch.arange(self.channels - 1, -1, -1, device=x.device)
            raw = ((x > 0).long() << shifts[None, :, None, None]).sum(1)
            invalid = int((raw >= self.num_classes).sum())
        return index.to(torch.uint8), invalid
