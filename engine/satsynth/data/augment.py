"""Augmentations applied identically to an image and its mask."""

from __future__ import annotations

import torch


def dihedral(image: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply element ``k`` (0..7) of the dihedral group to an image and its mask together.

    ``k % 4`` quarter turns, then a horizontal flip when ``k >= 4``.

    Args:
        image (`torch.Tensor`):
            ``(C, H, W)`` or a batch ``(N, C, H, W)``.
        mask (`torch.Tensor`):
            ``(H, W)`` or a batch ``(N, H, W)``.
        k (`int`):
            The group element, 0..7 (0: unchanged).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the transformed image and mask.
    """
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
    """A random dihedral transform per sample of a batch of square chips.

    Args:
        image (`torch.Tensor`):
            ``(N, C, H, W)`` with ``H == W``.
        mask (`torch.Tensor`):
            ``(N, H, W)``.
        generator (`torch.Generator`, *optional*):
            The random stream (seeded by the caller for reproducible training); torch's default
            without it.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the batch's images and masks, each sample turned and
        flipped alike.
    """
    ks = torch.randint(0, 8, (image.shape[0],), generator=generator)
    out_i, out_m = image.clone(), mask.clone()
    for k in range(1, 8):
        sel = (ks == k).nonzero().flatten()
        if len(sel):
            out_i[sel], out_m[sel] = dihedral(image[sel], mask[sel], k)
    return out_i, out_m
