"""The sliding window over one region: tiles read in a background thread (:mod:`source`), run in
batches through the forward (:mod:`runtime`), weighted and blended (:mod:`blend`), and every row
band that becomes final handed to the writer (:mod:`writer`) as class ids and confidences.

Memory depends on the tile size, the batch and the region's width, never on its area: only the
cells still open (a band about ``overlap`` rows tall across the width, plus one tile) are kept.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.errors import SatSynthError
from satsynth.predict.aoi import tile_bounds
from satsynth.predict.blend import BlendAccumulator, blend_window
from satsynth.predict.source import TileReader
from satsynth.predict.windows import Region, TilePlan
from satsynth.raster import TileGrid

log = logging.getLogger("satsynth")

#: Most tiles (run or skipped) held before their results are blended and progress is reported.
MAX_PENDING = 64

#: ``(k, j, data, valid)``: tile ``(k, j)`` of the grid, its normalized data and validity mask,
#: or ``None, None`` for a tile with nothing to predict.
Tile = tuple[int, int, "np.ndarray | None", "np.ndarray | None"]


def run_tiles(reader: TileReader, region: Region, writer: Any, plan: TilePlan, *,
              tile_rows: range | None = None, stage: str = "predict") -> None:
    """Predict ``region`` of the reader's dataset tile by tile into ``writer``.

    Args:
        reader: reads normalized tiles (with their validity) of the dataset.
        region: the window of the dataset to predict; the writer's rows are its rows.
        writer: receives ``add(row, ids, conf)`` full-width row bands in order (a
            :class:`~satsynth.predict.writer.PredictionWriter` or a band's part writer) and says
            whether it ``wants_confidence``.
        plan: the forward, tiling and class ids (:class:`~satsynth.predict.windows.TilePlan`).
        tile_rows: only these tile rows (a process's band of a distributed run, see
            :mod:`satsynth.predict.bands`); all of them by default.
        stage: the progress stage's name.
    """
    grid = plan.grid(region)
    tile_rows = tile_rows if tile_rows is not None else range(grid.shape[0])
    total = len(tile_rows) * grid.shape[1]
    blend = _Blend(grid, plan, writer)
    pending: list[Tile] = []
    log.debug("%d tiles of %d x %d px (%d x %d)", len(grid), grid.tile_w, grid.tile_h,
              *grid.shape)
    with progress.task(stage, total=total, unit="tile") as task, \
            _prefetch(_read_tiles(grid, region, reader, plan, tile_rows),
                      depth=2 * plan.batch) as tiles:
        for item in tiles:
            pending.append(item)
            if (sum(p[2] is not None for p in pending) >= plan.batch
                    or len(pending) >= MAX_PENDING):
                _flush(blend, pending, task, total)
                pending = []
        if pending:
            _flush(blend, pending, task, total)


class _Blend:
    """The forward and blending of batches of tiles of one grid, and the writing of the rows
    they finish."""

    def __init__(self, grid: TileGrid, plan: TilePlan, writer: Any) -> None:
        import torch

        self.plan, self.writer = plan, writer
        self.acc = BlendAccumulator(grid, plan.num_classes, confidence=writer.wants_confidence)
        self.weight = torch.from_numpy(blend_window(grid.tile_h, grid.tile_w, plan.overlap)
                                       ).to(plan.device)
        self.last_col = grid.shape[1] - 1
        self.n_run = 0

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Weighted class probabilities ``(N, K, h, w)`` of a batch of normalized tiles."""
        probs = self.plan.forward(x)
        if probs.shape[-2:] != x.shape[-2:]:
            raise SatSynthError(f"the model returned {tuple(probs.shape[-2:])} px for "
                                f"{tuple(x.shape[-2:])} px tiles; choose another --tile")
        return probs.mul_(self.weight).cpu().numpy()

    def add(self, tiles: list[Tile]) -> None:
        """Run the tiles that hold data, blend them in order and write the rows they finish."""
        arrays = [d for _, _, d, _ in tiles if d is not None]
        probs = self.probabilities(np.stack(arrays)) if arrays else None
        i = 0
        for k, j, data, valid in tiles:
            if data is not None:
                self.acc.add(k, j, probs[i], valid)  # type: ignore[index,arg-type]
                i += 1
            self.acc.finish_tile(k, j)
            if j == self.last_col:
                row, idx, conf = self.acc.finish_row(k)
                self.writer.add(row, self.plan.lut[idx], conf)
        self.n_run += len(arrays)


def _flush(blend: _Blend, pending: list[Tile], task: Any, total: int) -> None:
    blend.add(pending)
    done = len(pending)
    task.update(done, message=f"{int(task.n) + done}/{total} tiles", tiles_run=blend.n_run)


def _read_tiles(grid: TileGrid, region: Region, reader: TileReader, plan: TilePlan,
                tile_rows: range) -> Iterator[Tile]:
    """``(k, j, data, valid)`` per tile of ``tile_rows`` in order; data ``None`` for tiles with
    nothing to predict (outside the mask or all nodata), which are not read or not run."""
    ds_transform = reader.ds.transform
    for k, j, y, x in grid.tiles():
        if k not in tile_rows:
            continue
        h, w = min(grid.tile_h, region.height - y), min(grid.tile_w, region.width - x)
        row, col = region.row + y, region.col + x
        if plan.aoi is not None and not plan.aoi.intersects_box(
                *tile_bounds(ds_transform, row, col, h, w)):
            yield k, j, None, None
            continue
        data, valid = reader.read(row, col, grid.tile_h, grid.tile_w)
        yield (k, j, data, valid) if valid[:h, :w].any() else (k, j, None, None)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the reader thread starts: with one arena per thread, the
    tile buffers freed by the main thread fragment the reader's arena and resident memory creeps
    up with the raster's area (measured: +86 MB between 8192x1024 and 8192x8192, +14 MB capped).
    No-op where glibc is absent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


@contextmanager
def _prefetch(items: Iterator[Tile], depth: int) -> Iterator[Iterator[Tile]]:
    """Produce ``items`` in a background thread (reading and decoding overlap the model's
    forward pass; GDAL releases the GIL). Errors are re-raised in the consumer; leaving the
    block early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    def consume() -> Iterator[Tile]:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    _limit_malloc_arenas()
    thread = threading.Thread(target=produce, name="satsynth-read-tiles", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
