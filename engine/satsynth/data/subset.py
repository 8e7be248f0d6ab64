"""``satsynth subset``: a low-data dataset, written as a dataset of its own.

A random share (or number) of the training chips of a prepared dataset, chosen reproducibly by a
seed, with the validation and test splits copied whole (or capped), so that the generator and the
segmenter can both be trained on exactly the reduced set. The chips picked are the ones
``train-segmenter --real-fraction F`` picks for the same seed (:func:`real_subset`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.store import SPLITS, TEST_SPLIT, ChipStore, ChipStoreWriter, StoreMeta
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output

log = logging.getLogger("satsynth")


def real_subset(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The real chips a low-data run trains on: a random share of them.

    The pick depends only on ``n``, ``fraction`` and ``seed`` (``train-segmenter --real-fraction``
    and ``satsynth subset`` pick the same chips).

    Args:
        n (`int`):
            The number of real training chips.
        fraction (`float`):
            The share to keep (0..1; 1.0 keeps all).
        seed (`int`, *optional*, defaults to 0):
            The seed of the pick.

    Returns:
        `np.ndarray`: the sorted indices of the chips kept.
    """
    if not 0 < fraction <= 1:
        raise SatSynthError(f"--real-fraction must be in (0, 1], got {fraction}")
    if fraction >= 1:
        return np.arange(n)
    k = max(1, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False))


def capped(n: int, cap: int | None, seed: int) -> np.ndarray:
    """At most ``cap`` of ``n`` chips, picked at random by ``seed``.

    Args:
        n (`int`):
            The number of chips.
        cap (`int`, *optional*):
            The most to keep; `None` keeps all.
        seed (`int`):
            The seed of the pick.

    Returns:
        `np.ndarray`: the sorted indices of the chips kept.
    """
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _grid_offsets(meta: StoreMeta, source: int, t: np.ndarray) -> tuple[int, int]:
    """A chip's column/row offset in its source raster, from the two transforms."""
    from affine import Affine

    src = meta.sources[source] if source < len(meta.sources) else {}
    if not src.get("transform"):
        return 0, 0
    col, row = ~Affine(*src["transform"]) * (float(t[2]), float(t[5]))
    return int(round(col)), int(round(row))


def subset_dataset(dataset: str | Path, out: str | Path, *, train_fraction: float | None = None,
                   max_train_chips: int | None = None, seed: int = 0,
                   max_val_chips: int | None = None, max_test_chips: int | None = None
                   ) -> dict[str, Any]:
    """Write a low-data subset of ``dataset`` to ``out`` (``satsynth subset``).

    Args:
        dataset (`str` or `Path`):
            The dataset to take chips from.
        out (`str` or `Path`):
            The new dataset folder.
        train_fraction (`float`, *optional*):
            The share of the training chips to keep (:func:`real_subset`).
        max_train_chips (`int`, *optional*):
            Or the number of training chips to keep.
        seed (`int`, *optional*, defaults to 0):
            The seed of the picks.
        max_val_chips (`int`, *optional*):
            The most validation chips to keep (all without it).
        max_test_chips (`int`, *optional*):
            The most test chips to keep (all without it; copied unread).

    Returns:
        `dict[str, Any]`: ``dataset`` (the new folder's path) and the chip count of each split.

    Raises:
        `SatSynthError`: bad options or a folder that is not a dataset.
    """
    if (train_fraction is None) == (max_train_chips is None):
        raise SatSynthError("give one of --train-fraction or --max-train-chips")
    for name, v in (("--max-train-chips", max_train_chips), ("--max-val-chips", max_val_chips),
                    ("--max-test-chips", max_test_chips)):
        if v is not None and v < 1:
            raise SatSynthError(f"{name} must be at least 1, got {v}")
    store = ChipStore(dataset)
    out = check_output(out, "dataset", inputs=[store.path])
    n_train = store.count("train")
    if n_train == 0:
        raise SatSynthError("the dataset has no training chips", store.path)
    if train_fraction is not None:
        picks = {"train": real_subset(n_train, train_fraction, seed)}
    else:
        picks = {"train": capped(n_train, max_train_chips, seed)}
    caps = {"val": max_val_chips, TEST_SPLIT: max_test_chips}
    for split in SPLITS[1:]:
        if store.has_split(split):
            picks[split] = capped(store.count(split), caps[split], seed + 1)
    meta = StoreMeta.from_dict(store.meta.to_dict(), store.path / "dataset.json")
    meta.extra = {**meta.extra, "subset": {
        "dataset": str(store.path), "train_fraction": train_fraction,
        "max_train_chips": max_train_chips, "max_val_chips": max_val_chips,
        "max_test_chips": max_test_chips, "seed": seed,
        "chips": {k: int(len(v)) for k, v in picks.items()},
        "train_indices": picks["train"].tolist()}}
    total = sum(len(v) for v in picks.values())
    with ChipStoreWriter(out, meta, {k: len(v) for k, v in picks.items()}) as w, \
            progress.task("subset", total=total, unit="chip") as bar:
        for split, idx in picks.items():
            # copied unread: the test chips are not looked at, only moved into the subset
            chips = store.split(split, final_evaluation=split == TEST_SPLIT)
            for i in idx:
                col, row = _grid_offsets(meta, int(chips.sources[i]), chips.transforms[i])
                w.add(split, np.asarray(chips.images[i]), np.asarray(chips.labels[i]),
                      chips.transforms[i], int(chips.sources[i]), col, row)
                bar.update(1, message=f"copying {split} chips")
    log.info("subset %s: %s chips of %s (seed %d)", out,
             ", ".join(f"{len(v)} {k}" for k, v in picks.items()), store.path, seed)
    return {"dataset": str(out), **{k: int(len(v)) for k, v in picks.items()}}


__all__ = ["capped", "real_subset", "subset_dataset"]
