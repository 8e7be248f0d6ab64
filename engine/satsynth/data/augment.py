"""Augmentations applied identically to an image and its mask."""

from __future__ import annotations

import torch


def dihedral(image: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply element ``k`` (0..7) of the dihedral group: ``k % 4`` quarter turns, then a
    horizontal flip when ``k >= 4``. Works on (C,H,W)/(H,W) or batched (N,C,H,W)/(N,H,W)."""
    dims_i = (-2, -1)
    image = torch.rot90(image, k % 4, dims_i)
    mask = torch.rot90(mask, k % 4, dims_i)
    if k >= 4:
        image = torch.flip(image, (-1,))
        mask = torch.flip(mask, (-1,))
    return image, mask


def random_dihedral_batch(image: torch.Tensor, mask: torch.Tensor,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random dihedral transform per sample of a batch (N,C,H,W)/(N,H,W) (square chips)."""
    ks = torch.randint(0, 8, (image.shape[0],), generator=generator)
    out_i, out_m = image.clone(), mask.clone()
    for k in range(1, 8):
        sel = (ks == k).nonzero().flatten()
        if len(sel):
            out_i[sel], out_m[sel] = dihedral(image[sel], mask[sel], k)
    return out_i, out_m
