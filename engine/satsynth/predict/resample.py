"""``--match-resolution``: predict on the image resampled to the model's pixel size (a WarpedVRT),
then bring the classes (and confidences) back onto the image's grid by nearest neighbour."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from satsynth import progress
from satsynth.distributed import Processes
from satsynth.errors import SatSynthError
from satsynth.predict.aoi import bounds_to_window, tile_bounds
from satsynth.predict.bands import run_bands
from satsynth.predict.source import TileReader, matched_vrt
from satsynth.predict.windows import Region, TilePlan
from satsynth.predict.writer import PredictionWriter

log = logging.getLogger("satsynth")

#: Rows brought back onto the image's grid at a time.
RESAMPLE_ROWS = 512


def predict_resampled(reader: TileReader, region: Region, out_transform: Any,
                      scale: tuple[float, float], writer: PredictionWriter | None,
                      work: Path | None, plan: TilePlan, procs: Processes,
                      scratch: Path | None) -> None:
    """Predict ``region`` of the reader's image at the model's pixel size into ``writer``.

    Args:
        reader: reads the image's normalized tiles.
        region: the window of the image to predict, on the image's grid.
        out_transform: the georeference of ``region`` (the output's).
        scale: ``(x, y)`` factor from the image's pixels to the model's
            (:func:`~satsynth.predict.source.resolution_scale`).
        writer: the output writer on the image's grid (None on the processes other than the
            main one of a distributed run).
        work: a temporary folder for the prediction on the model's grid (main process only).
        plan: how the tiles are run.
        procs: the processes of this run.
        scratch: the distributed run's shared folder.
    """
    src = reader.ds
    want_conf = writer is not None and writer.wants_confidence
    model_grid = work / "model_grid.tif" if work is not None else None
    model_conf = work / "model_grid_conf.tif" if work is not None and want_conf else None
    with matched_vrt(src, *scale) as vrt:
        vwin = bounds_to_window(tile_bounds(out_transform, 0, 0, region.height, region.width),
                                vrt.transform, vrt.width, vrt.height)
        if vwin is None:  # cannot happen for a region inside the image; be explicit anyway
            raise SatSynthError("the area to predict vanished when resampling", reader.path)
        vregion = Region(*vwin)
        log.info("resampled grid: %d x %d px", vregion.width, vregion.height)
        inner = None
        if writer is not None and model_grid is not None:
            from rasterio.windows import Window

            inner = PredictionWriter(
                model_grid, width=vregion.width, height=vregion.height, crs=src.crs,
                transform=vrt.window_transform(Window(vregion.col, vregion.row, vregion.width,
                                                      vregion.height)),
                confidence_path=model_conf)
        try:
            run_bands(reader.on(vrt), vregion, inner, plan, procs, scratch)
        finally:
            if inner is not None:
                inner.close()
    if writer is not None and model_grid is not None:
        _to_image_grid(model_grid, model_conf, src.crs, out_transform, region, writer)


def _to_image_grid(classes: Path, confidence: Path | None, crs: Any, transform: Any,
                   region: Region, writer: PredictionWriter) -> None:
    """Copy the prediction on the model's grid into ``writer`` on the image's, nearest
    neighbour, :data:`RESAMPLE_ROWS` rows at a time."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    with ExitStack() as stack:
        opened = [stack.enter_context(rasterio.open(p)) for p in (classes, confidence) if p]
        vrts = [stack.enter_context(WarpedVRT(
            ds, crs=crs, transform=transform, width=region.width, height=region.height,
            resampling=Resampling.nearest, nodata=ds.nodata)) for ds in opened]
        rows = range(0, region.height, RESAMPLE_ROWS)
        for r in progress.track(rows, "resample to the image grid", unit="block"):
            win = Window(0, r, region.width, min(RESAMPLE_ROWS, region.height - r))
            ids = vrts[0].read(1, window=win)
            conf = vrts[1].read(1, window=win) if len(vrts) > 1 else None
            writer.add(r, ids, conf)
