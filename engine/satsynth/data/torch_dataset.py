"""PyTorch access to a chip store: normalized image tensors and class-index masks."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from satsynth.data.store import ChipSplit, ChipStore


class ChipDataset(Dataset):
    """Chips of one split as ``(image float32 (C,S,S) in [-1,1], mask int64 (S,S))``.

    Reads straight from the memory-mapped arrays.

    Args:
        store (`ChipStore`):
            The chip store.
        split (`str`, *optional*, defaults to `"train"`):
            The split to read (never ``test``: :meth:`ChipStore.split` refuses it).
        indices (`np.ndarray`, *optional*):
            The chips to use (a subset); all by default.
    """

    def __init__(self, store: ChipStore, split: str = "train",
                 indices: np.ndarray | None = None) -> None:
        self.store = store
        self.split_name = split
        self.chips: ChipSplit = store.split(split)
        self.norm = store.normalizer
        self.indices = np.arange(len(self.chips)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        img = self.norm.to_model(np.asarray(self.chips.images[j]))
        mask = np.asarray(self.chips.labels[j]).astype(np.int64)
        return torch.from_numpy(img), torch.from_numpy(mask)

    def get_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one vectorized read (faster than per-item collation).

        Args:
            idx (`np.ndarray`):
                Positions in this dataset (into ``indices``).

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: images ``(B, C, S, S)`` float32 in [-1, 1] and
            masks ``(B, S, S)`` int64 (255 = ignore).
        """
        j = self.indices[np.asarray(idx)]
        img = self.norm.to_model(np.asarray(self.chips.images[j]))
        mask = np.asarray(self.chips.labels[j]).astype(np.int64)
        return torch.from_numpy(img), torch.from_numpy(mask)
