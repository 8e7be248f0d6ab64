"""Prediction across processes (``accelerate launch`` / ``torchrun``): disjoint bands of rows.

Every process runs the tile rows of its band (:func:`~satsynth.predict.windows.rows_for_rank`)
and writes the rows it owns into its own part GeoTIFF in a scratch folder beside the output;
after a barrier the main process copies the parts, block row by block row, into the output
writer, which styles, masks and vectorizes them exactly as in a single-process run. Band edges
lie on tile-row starts and each process also runs the tile rows overlapping its first row, so the
blend, and thus the class raster, is identical to a single-process run. Memory per process stays
that of a single-process run (the part writer buffers two block rows; assembly reads one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.distributed import Processes
from satsynth.predict.source import TileReader
from satsynth.predict.tiles import run_tiles
from satsynth.predict.windows import Region, TilePlan, rows_for_rank
from satsynth.predict.writer import BLOCK, PredictionWriter
from satsynth.raster import TileGrid, quiet_georef_warnings

log = logging.getLogger("satsynth")


class BandWriter:
    """Receives the row bands of a run over some tile rows and keeps region rows ``[y0, y1)``,
    written to a pixel-space part GeoTIFF (and its confidence part)."""

    def __init__(self, path: Path, y0: int, y1: int, width: int, confidence: bool) -> None:
        from affine import Affine

        self.y0, self.y1 = y0, y1
        self._inner = PredictionWriter(
            path, width=width, height=y1 - y0, crs=None, transform=Affine.identity(),
            confidence_path=conf_part(path) if confidence else None)

    @property
    def wants_confidence(self) -> bool:
        return self._inner.wants_confidence

    def add(self, row: int, ids: np.ndarray, conf: np.ndarray | None = None) -> None:
        lo, hi = max(row, self.y0), min(row + len(ids), self.y1)
        if lo < hi:
            self._inner.add(lo - self.y0, ids[lo - row:hi - row],
                            conf[lo - row:hi - row] if conf is not None else None)

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def close(self) -> None:
        self._inner.close()


def conf_part(path: Path) -> Path:
    return path.with_name(path.stem + ".conf.tif")


def run_bands(reader: TileReader, region: Region, writer: Any, plan: TilePlan,
              procs: Processes, scratch: Path | None) -> None:
    """Predict ``region`` into ``writer`` (:func:`~satsynth.predict.tiles.run_tiles`): all of it
    in a single process, or this process's band of it when several run, after which the main
    process assembles every band into ``writer``.

    Args:
        reader: reads the dataset's normalized tiles.
        region: the window of the dataset to predict.
        writer: the output writer; ``None`` on the processes other than the main one.
        plan: how the tiles are run.
        procs: the processes of this run (:func:`satsynth.distributed.processes`).
        scratch: a folder all processes share for the band parts (distributed runs only).
    """
    if not procs.distributed:
        run_tiles(reader, region, writer, plan)
        return
    assert scratch is not None
    grid = plan.grid(region)
    tile_rows, y0, y1 = rows_for_rank(grid, procs.rank, procs.world)
    confidence = bool(procs.shared(writer.wants_confidence if writer is not None else None))
    part = scratch / f"part-{procs.rank:05d}.tif"
    log.info("process %d of %d: rows %d-%d (tile rows %d-%d)", procs.rank, procs.world, y0, y1,
             tile_rows.start, tile_rows.stop)
    if y1 > y0:
        band = BandWriter(part, y0, y1, region.width, confidence)
        try:
            run_tiles(reader, region, band, plan, tile_rows=tile_rows)
        finally:
            band.close()
        if not band.complete:
            raise RuntimeError(f"process {procs.rank} did not write all of its rows")
    procs.barrier()
    if procs.is_main:
        _assemble(scratch, grid, procs.world, writer, confidence)


def _assemble(scratch: Path, grid: TileGrid, world: int, writer: Any, confidence: bool) -> None:
    """Copy the parts, in row order and one block row at a time, into ``writer``."""
    import rasterio
    from rasterio.windows import Window

    from satsynth import progress

    parts = []
    for rank in range(world):
        _, y0, y1 = rows_for_rank(grid, rank, world)
        if y1 > y0:
            parts.append((y0, y1, scratch / f"part-{rank:05d}.tif"))
    with progress.task("predict: assemble bands", total=grid.height, unit="row") as task:
        for y0, y1, path in parts:
            with quiet_georef_warnings(), rasterio.open(path) as ds:
                conf_ds = rasterio.open(conf_part(path)) if confidence else None
                try:
                    for r in range(0, y1 - y0, BLOCK):
                        win = Window(0, r, ds.width, min(BLOCK, y1 - y0 - r))
                        ids = ds.read(1, window=win)
                        conf = conf_ds.read(1, window=win) if conf_ds is not None else None
                        writer.add(y0 + r, ids, conf)
                        task.update(win.height)
                finally:
                    if conf_ds is not None:
                        conf_ds.close()
