"""Which chips go where: the spatial train/val/test split and the chip cap.

The split holds out whole spatial blocks of chips for validation (and, when asked, for a test
split) and then drops every training chip whose footprint overlaps a validation or test chip, and
every validation chip overlapping a test chip. The chip grid of a raster, its reading tiles and
the chip footprints are :mod:`satsynth.raster`'s (``plan_tiles``, ``footprint_boxes``).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("satsynth")

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")  # indexed by TRAIN, VAL, TEST


def assign_split(sources: np.ndarray, rows: np.ndarray, cols: np.ndarray, val_fraction: float,
                 block: int, val_source_mask: np.ndarray | None = None, seed: int = 0,
                 test_fraction: float = 0.0, test_source_mask: np.ndarray | None = None
                 ) -> np.ndarray:
    """Split per chip (``TRAIN``/``VAL``/``TEST``) by spatial blocks of ``block`` pixels.

    Chips of sources flagged in ``test_source_mask`` all go to test, those flagged in
    ``val_source_mask`` to validation (then no blocks are held out elsewhere for that split);
    otherwise randomly chosen blocks of the remaining chips go to test until about
    ``test_fraction`` of the chips are there, then to validation until about ``val_fraction``,
    always leaving at least one block for training.

    Args:
        sources (`np.ndarray`):
            ``(N,)`` each chip's source index.
        rows (`np.ndarray`):
            ``(N,)`` each chip's row offset in its source, in pixels.
        cols (`np.ndarray`):
            ``(N,)`` each chip's column offset.
        val_fraction (`float`):
            The share of chips held out for validation (0..0.9).
        block (`int`):
            The side of a split block in pixels.
        val_source_mask (`np.ndarray`, *optional*):
            ``(number of sources,)`` bool: the sources that go wholly to validation.
        seed (`int`, *optional*, defaults to 0):
            The seed of the random block choice.
        test_fraction (`float`, *optional*, defaults to 0.0):
            The share of chips held out for the final test (0: no test split).
        test_source_mask (`np.ndarray`, *optional*):
            ``(number of sources,)`` bool: the sources that go wholly to test.

    Returns:
        `np.ndarray`: ``(N,)`` the split of each chip: ``TRAIN`` (0), ``VAL`` (1) or ``TEST`` (2).
    """
    n = len(sources)
    split = np.full(n, TRAIN, dtype=np.int8)
    if n == 0:
        return split
    by_source = {TEST: test_source_mask is not None and test_source_mask.any(),
                 VAL: val_source_mask is not None and val_source_mask.any()}
    if by_source[TEST]:
        split[test_source_mask[sources]] = TEST
    if by_source[VAL]:
        split[val_source_mask[sources] & (split == TRAIN)] = VAL
    wanted = [(s, f) for s, f in ((TEST, test_fraction), (VAL, val_fraction))
              if not by_source[s] and f > 0]
    if not wanted:
        return split
    block = max(int(block), 1)
    free = np.flatnonzero(split == TRAIN)
    keys = np.stack([sources[free], rows[free] // block, cols[free] // block], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) < 2:
        return split
    sizes = np.bincount(inverse, minlength=len(uniq))
    order = list(np.random.default_rng(seed).permutation(len(uniq)))
    left = len(free)
    for which, fraction in wanted:
        target = fraction * n
        chosen, got, rest = [], 0, []
        for b in order:
            if got >= target or left - sizes[b] <= 0:  # keep something for training
                rest.append(b)
                continue
            chosen.append(b)
            got += sizes[b]
            left -= sizes[b]
        order = rest
        split[free[np.isin(inverse, chosen)]] = which
    return split


def overlapping_train(boxes: np.ndarray, groups: np.ndarray, split: np.ndarray,
                      kept: int = TRAIN, held: tuple[int, ...] = (VAL, TEST)) -> np.ndarray:
    """Which chips of one split overlap (with area) a chip held out in another split.

    Chips of different groups (e.g. sources in pixel space) never overlap.

    Args:
        boxes (`np.ndarray`):
            ``(N, 4)`` each chip's footprint: xmin, ymin, xmax, ymax.
        groups (`np.ndarray`):
            ``(N,)`` each chip's group (its coordinate space).
        split (`np.ndarray`):
            ``(N,)`` each chip's split.
        kept (`int`, *optional*, defaults to `TRAIN`):
            The split whose overlapping chips are marked.
        held (`tuple[int, ...]`, *optional*, defaults to `(VAL, TEST)`):
            The splits they may not overlap.

    Returns:
        `np.ndarray`: ``(N,)`` bool, `True` for a ``kept`` chip overlapping a ``held`` one (to
        drop).
    """
    import shapely

    bad = np.zeros(len(split), dtype=bool)
    for g in np.unique(groups):
        sel = groups == g
        tr = np.flatnonzero(sel & (split == kept))
        va = np.flatnonzero(sel & np.isin(split, held))
        if len(tr) == 0 or len(va) == 0:
            continue
        vbox = shapely.box(*boxes[va].T)
        tbox = shapely.box(*boxes[tr].T)
        tree = shapely.STRtree(vbox)
        ti, vi = tree.query(tbox, predicate="intersects")
        if len(ti) == 0:
            continue
        inter = shapely.area(shapely.intersection(tbox[ti], vbox[vi]))
        areas = shapely.area(tbox[ti])
        hit = inter > 1e-9 * np.maximum(areas, 1e-30)
        bad[tr[np.unique(ti[hit])]] = True
    return bad


def cap_chips(split: np.ndarray, max_chips: int, seed: int = 0) -> np.ndarray:
    """A keep-mask of at most ``max_chips`` chips, keeping the train/val/test proportion.

    Args:
        split (`np.ndarray`):
            ``(N,)`` each chip's split.
        max_chips (`int`):
            The most chips to keep.
        seed (`int`, *optional*, defaults to 0):
            The seed of the random pick.

    Returns:
        `np.ndarray`: ``(N,)`` bool, `True` for the chips kept.
    """
    n = len(split)
    keep = np.ones(n, dtype=bool)
    if max_chips is None or n <= max_chips:
        return keep
    rng = np.random.default_rng(seed + 1)
    keep[:] = False
    held = {}
    for s in (VAL, TEST):
        held[s] = int(round(max_chips * float((split == s).sum()) / n))
        if (split == s).any() and max_chips >= 2:
            held[s] = max(held[s], 1)
    for s, k in ((VAL, held[VAL]), (TEST, held[TEST]),
                 (TRAIN, max_chips - held[VAL] - held[TEST])):
        idx = np.flatnonzero(split == s)
        if len(idx):
            keep[rng.choice(idx, size=min(k, len(idx)), replace=False)] = True
    return keep
