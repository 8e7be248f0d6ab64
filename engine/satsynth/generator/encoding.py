"""Label masks as model channels: analog bits (default) or one-hot, and back.

Analog bits (Chen et al. 2022, used by SatSynth): class index ``k`` becomes the ``B = ceil(log2 K)``
bits of ``k`` written as +-1 values. One-hot uses K channels of +-1. Ignore pixels (255) are encoded
as all zeros (the midpoint) and are left out of the label loss.

Decoding (the default, ``margin`` :data:`UNDECIDED_MARGIN`): a pixel whose channels are all
decided (|value| >= the margin) and whose thresholded code is a class's code gets that class;
every other pixel is *ignore* (255): a channel still undecided at the end of sampling (where
Building 001 meets Land 010, an undecided middle bit would otherwise make Road 011 or Unlabeled
000, a third class along the boundary), or a code of no class (bits >= K, or a one-hot vector
with no or several positive channels). Segmenters leave ignore pixels out of their loss and
metrics. ``margin=None`` decodes every pixel: the nearest valid code (thresholding at 0 where
that code is valid; argmax for one-hot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from satsynth.data.classes import IGNORE_INDEX
from satsynth.errors import SatSynthError

ENCODINGS = ("bits", "onehot")
#: Label channels closer to 0 than this at the end of sampling are undecided: the pixel decodes
#: to ignore (255). Half the distance from the midpoint to a code value.
UNDECIDED_MARGIN = 0.5


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

    def decode(self, x: torch.Tensor, margin: float | None = UNDECIDED_MARGIN
               ) -> tuple[torch.Tensor, int]:
        """(N,C,H,W) analog label channels -> ((N,H,W) uint8 class indices, count of pixels that
        decode to no class). With ``margin`` (default) those pixels are ignore (255): a channel
        with |value| < margin, or a thresholded code of no class. ``margin=None``: the nearest
        valid code everywhere, counting the pixels whose thresholded bits were no class."""
        x = x.float()
        book = self.codebook(x.device)  # (K, C)
        scores = torch.einsum("nchw,kc->nkhw", x, book)
        index = scores.argmax(1)
        c = self.channels
        if self.kind == "bits":
            shifts = torch.arange(c - 1, -1, -1, device=x.device)
            raw = ((x > 0).long() << shifts[None, :, None, None]).sum(1)
            no_class = raw >= self.num_classes
        else:  # one-hot: exactly one positive channel
            no_class = (x > 0).sum(1) != 1
        if margin is None:
            return index.to(torch.uint8), int(no_class.sum()) if self.kind == "bits" else 0
        ignore = no_class | (x.abs() < margin).any(1)
        index = index.masked_fill(ignore, IGNORE_INDEX)
        return index.to(torch.uint8), int(ignore.sum())
