"""Seamless blending of overlapping tile probabilities, keeping only the cells still open.

Each tile's class probabilities are weighted by a separable window that is 1 in the middle and
falls smoothly (half a cosine) to nearly 0 over ``overlap`` pixels at each edge, so a pixel's
prediction moves gradually from one tile to the next and the unreliable tile borders count
little. As all tiles share the window and sit on a grid, the summed weight at a pixel is the
product of two 1-D sums, so no weight raster is kept.
"""

from __future__ import annotations

import numpy as np

from satsynth.data.classes import IGNORE_INDEX
from satsynth.raster import TileGrid


def ramp_window(size: int, overlap: int) -> np.ndarray:
    """1-D weights: a half-cosine rise over ``overlap`` pixels, 1 in the middle, mirrored."""
    w = np.ones(size, dtype=np.float32)
    o = min(overlap, size // 2)
    if o > 0:
        i = np.arange(o, dtype=np.float64)
        rise = (0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / o)).astype(np.float32)
        w[:o] = rise
        w[size - o:] = np.minimum(w[size - o:], rise[::-1])
    return np.maximum(w, 1e-6)


def blend_window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """2-D ``(tile_h, tile_w)`` weight window (outer product of two ramps)."""
    return np.outer(ramp_window(tile_h, overlap), ramp_window(tile_w, overlap))


def _weight_sums(length: int, tile: int, starts: list[int], overlap: int) -> np.ndarray:
    total = np.zeros(length, dtype=np.float32)
    ramp = ramp_window(tile, overlap)
    for s in starts:
        e = min(s + tile, length)
        total[s:e] += ramp[: e - s]
    return total


def _max_argmax(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max and argmax (uint8) over the class axis of ``(K, h, w)``: one pass per class, much
    faster than a strided reduction for the few classes segmenters have."""
    top = acc[0].copy()
    idx = np.zeros(top.shape, dtype=np.uint8)
    for k in range(1, acc.shape[0]):
        better = acc[k] > top
        np.copyto(top, acc[k], where=better)
        idx[better] = k
    return top, idx


class BlendAccumulator:
    """Sums weighted tile probabilities into the open cells of a :class:`TileGrid` and turns the
    cells that become final into class indices and confidences, one row band at a time
    (``confidence=False`` skips the confidences when nobody writes them)."""

    def __init__(self, grid: TileGrid, num_classes: int, confidence: bool = True) -> None:
        self.grid = grid
        self.k = num_classes
        self.confidence = confidence
        self.sum_y = _weight_sums(grid.height, grid.tile_h, grid.rows.starts, grid.overlap)
        self.sum_x = _weight_sums(grid.width, grid.tile_w, grid.cols.starts, grid.overlap)
        self._cells: dict[tuple[int, int], np.ndarray] = {}
        self._valid: dict[tuple[int, int], np.ndarray] = {}
        self._band_row = 0
        self._band_index: np.ndarray | None = None
        self._band_conf: np.ndarray | None = None

    @property
    def open_cells(self) -> int:
        """How many cells hold partial sums (memory check)."""
        return len(self._cells)

    @property
    def open_bytes(self) -> int:
        """Bytes held in partial sums."""
        return sum(a.nbytes for a in self._cells.values())

    def add(self, k: int, j: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Add tile ``(k, j)``: ``probs`` (K, tile_h, tile_w) already multiplied by the window,
        ``valid`` (tile_h, tile_w) True where the input has data."""
        g = self.grid
        ty, tx = g.rows.starts[k], g.cols.starts[j]
        for cell in g.cells_of(k, j):
            y0, y1, x0, x1 = g.cell_window(*cell)
            part = probs[:, y0 - ty:y1 - ty, x0 - tx:x1 - tx]
            acc = self._cells.get(cell)
            if acc is None:
                self._cells[cell] = part.copy()
                self._valid[cell] = valid[y0 - ty:y1 - ty, x0 - tx:x1 - tx].copy()
            else:
                acc += part

    def finish_tile(self, k: int, j: int) -> None:
        """Finalize the cells whose last tile is ``(k, j)`` into the current row band."""
        g = self.grid
        if self._band_index is None:
            y0, y1 = g.rows.final_span(k)
            self._band_row = y0
            self._band_index = np.full((y1 - y0, g.width), IGNORE_INDEX, dtype=np.uint8)
            self._band_conf = (np.zeros((y1 - y0, g.width), dtype=np.uint8)
                               if self.confidence else None)
        for cell in list(g.cells_final_after(k, j)):
            acc = self._cells.pop(cell, None)
            valid = self._valid.pop(cell, None)
            if acc is None:
                continue  # only skipped (empty) tiles covered it: stays nodata
            y0, y1, x0, x1 = g.cell_window(*cell)
            top, idx = _max_argmax(acc)
            idx[~valid] = IGNORE_INDEX
            by = y0 - self._band_row
            self._band_index[by:by + y1 - y0, x0:x1] = idx
            if self._band_conf is not None:
                prob = top / np.outer(self.sum_y[y0:y1], self.sum_x[x0:x1])
                conf = np.clip(np.rint(prob * 255.0), 1, 255).astype(np.uint8)
                conf[~valid] = 0
                self._band_conf[by:by + y1 - y0, x0:x1] = conf

    def finish_row(self, k: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        """After the last tile of tile row ``k``: ``(first_row, class_indices, confidence)`` of
        the rows that are now final; confidence is the top probability x 255 (1..255), or None
        when made with ``confidence=False``, and index 255 / confidence 0 mark pixels without
        data."""
        if self._band_index is None:  # a row of only skipped tiles
            self.finish_tile(k, len(self.grid.cols.starts) - 1)
        out = (self._band_row, self._band_index, self._band_conf)
        self._band_index = self._band_conf = None
        return out  # type: ignore[return-value]
