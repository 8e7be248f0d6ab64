"""Sliding windows over a raster region and the cells their overlaps cut it into.

Tiles of ``tile_h x tile_w`` pixels cover a ``height x width`` region with at least ``overlap``
pixels shared by neighbours. The tile edges cut the region into *cells*, rectangles covered by the
same set of tiles. Tiles are processed in row-major order, so a cell is final right after the last
tile that covers it (the bottom-right one): blending only keeps the cells still open, which is a
band about ``overlap`` rows tall across the width plus one tile.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field

from satsynth.errors import SatSynthError


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``, evenly spread, neighbours sharing at least
    ``overlap`` pixels; the last tile ends at ``length`` (one tile when ``length <= tile``)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


#: ``satsynth predict``'s window size and the pixels neighbouring windows share (also what
#: ``satsynth export`` records for Deepness by default).
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


def check_tiling(tile: int, overlap: int, batch: int, multiple: int, arch: str) -> None:
    """Clear errors for tile/overlap/batch values the model or the blending cannot use."""
    if tile < 16 or tile % multiple:
        raise SatSynthError(f"--tile {tile} must be at least 16 and a multiple of {multiple} for a "
                            f"{arch} model (e.g. 256, 512 or 1024)")
    if not 0 <= overlap <= tile // 2:
        raise SatSynthError(f"--overlap {overlap} must be between 0 and half the tile "
                            f"({tile // 2} for --tile {tile})")
    if batch < 1:
        raise SatSynthError(f"--batch {batch} must be at least 1")


@dataclass
class _Axis:
    """Tiles and cell segments along one axis."""

    length: int
    tile: int
    starts: list[int]
    breaks: list[int] = field(init=False)  # segment boundaries, 0 .. length
    last: list[int] = field(init=False)  # per segment: index of the last tile covering it
    segments_of: list[list[int]] = field(init=False)  # per tile: the segments it covers

    def __post_init__(self) -> None:
        cuts = {0, self.length}
        for s in self.starts:
            cuts.add(min(s, self.length))
            cuts.add(min(s + self.tile, self.length))
        self.breaks = sorted(cuts)
        n_seg = len(self.breaks) - 1
        # the tile with the largest start <= segment start covers the whole segment
        self.last = [bisect_right(self.starts, self.breaks[i]) - 1 for i in range(n_seg)]
        self.segments_of = [[] for _ in self.starts]
        for i in range(n_seg):
            for t, s in enumerate(self.starts):
                if s <= self.breaks[i] and self.breaks[i + 1] <= s + self.tile:
                    self.segments_of[t].append(i)

    def segment(self, i: int) -> tuple[int, int]:
        return self.breaks[i], self.breaks[i + 1]

    def final_span(self, t: int) -> tuple[int, int]:
        """Pixels that are final once tile ``t`` (and all before it) is done."""
        lo = self.starts[t]
        hi = self.starts[t + 1] if t + 1 < len(self.starts) else self.length
        return lo, hi


@dataclass
class TileGrid:
    """Tiles over a ``height x width`` region and the cells they cut it into."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int

    def __post_init__(self) -> None:
        self.rows = _Axis(self.height, self.tile_h, tile_starts(self.height, self.tile_h,
                                                                self.overlap))
        self.cols = _Axis(self.width, self.tile_w, tile_starts(self.width, self.tile_w,
                                                               self.overlap))

    @classmethod
    def for_region(cls, height: int, width: int, tile: int, overlap: int,
                   multiple: int = 1) -> TileGrid:
        """Tiles of ``tile`` pixels, shrunk (to a multiple of ``multiple``) for small regions."""
        th = min(tile, round_up(height, multiple))
        tw = min(tile, round_up(width, multiple))
        return cls(height, width, th, tw, overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Tile rows x tile columns."""
        return len(self.rows.starts), len(self.cols.starts)

    def __len__(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        """``(k, j, y, x)`` for every tile in processing (row-major) order."""
        for k, y in enumerate(self.rows.starts):
            for j, x in enumerate(self.cols.starts):
                yield k, j, y, x

    def cells_of(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        """Cells ``(r, c)`` covered by tile ``(k, j)``."""
        for r in self.rows.segments_of[k]:
            for c in self.cols.segments_of[j]:
                yield r, c

    def cells_final_after(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        """Cells whose last covering tile is ``(k, j)``."""
        for r in self.rows.segments_of[k]:
            if self.rows.last[r] != k:
                continue
            for c in self.cols.segments_of[j]:
                if self.cols.last[c] == j:
                    yield r, c

    def cell_window(self, r: int, c: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of cell ``(r, c)`` in region pixels."""
        return (*self.rows.segment(r), *self.cols.segment(c))


def rows_for_rank(grid: TileGrid, rank: int, world: int) -> tuple[range, int, int]:
    """Process ``rank``'s part of a distributed prediction: ``(tile_rows, y0, y1)``.

    Each process owns a contiguous band of tile rows and writes the region rows ``[y0, y1)`` that
    become final in them (from the start of its first tile row to the start of the next
    process's). It also runs, before its band, the earlier tile rows that overlap row ``y0``, so
    every pixel it writes is blended from the same tiles, in the same order, as in a
    single-process run. A process with no tile row gets ``y0 == y1``."""
    from satsynth.distributed import share

    starts = grid.rows.starts
    own = share(len(starts), rank, world)
    if not own:
        return range(0), 0, 0
    y0 = starts[own.start]
    y1 = starts[own.stop] if own.stop < len(starts) else grid.height
    first = next(t for t, s in enumerate(starts) if s + grid.tile_h > y0)
    return range(first, own.stop), y0, y1
