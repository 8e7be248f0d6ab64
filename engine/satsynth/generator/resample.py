"""Changing the resolution of image-mask pairs: area averaging for images, the majority class for
masks (down), bilinear for the upsampler's condition (up).

Used by ``train-generator --size`` (a base model at a lower resolution than the chips) and by the
super-resolution cascade (``train-upsampler``, ``synthesize --upsampler``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from satsynth.data.classes import IGNORE_INDEX
from satsynth.errors import SatSynthError


def check_factor(size: int, target: int, what: str = "size") -> int:
    """The integer factor from ``size`` px down to ``target`` px, or a clear error."""
    if target < 1 or target > size or size % target:
        raise SatSynthError(f"{what} {target} px must divide the {size} px chips evenly "
                            f"(e.g. {size // 2} or {size // 4})")
    return size // target


def downsample_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,S,S) float images -> (N,C,size,size) by area averaging (S a multiple of size)."""
    f = check_factor(image.shape[-1], size)
    return image if f == 1 else F.avg_pool2d(image, f)


def downsample_mask(mask: torch.Tensor, size: int, num_classes: int) -> torch.Tensor:
    """(N,S,S) class indices -> (N,size,size): each block's most frequent labelled class (the
    lowest index on ties); a block with no labelled pixel stays ignore (255)."""
    f = check_factor(mask.shape[-1], size)
    if f == 1:
        return mask
    m = mask.long()
    labelled = m != IGNORE_INDEX
    onehot = F.one_hot(torch.where(labelled, m, 0), num_classes).permute(0, 3, 1, 2).float()
    votes = F.avg_pool2d(onehot * labelled[:, None].float(), f)
    out = votes.argmax(1)
    return torch.where(votes.sum(1) > 0, out, torch.full_like(out, IGNORE_INDEX)).to(mask.dtype)


def downsample_pair(image: torch.Tensor, mask: torch.Tensor, size: int, num_classes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """An image batch and its masks at ``size`` px (area averaging; majority class)."""
    return downsample_image(image, size), downsample_mask(mask, size, num_classes)


def upsample_condition(pair: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,s,s) model-space pair channels (image bands + label code) -> (N,C,size,size),
    bilinearly (the super-resolution model's conditioning input)."""
    if pair.shape[-1] == size:
        return pair
    return F.interpolate(pair, size=(size, size), mode="bilinear", align_corners=False)
