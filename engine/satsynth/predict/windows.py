"""Prediction windows: the region to predict, how its tiles are run (:class:`TilePlan`), which
``--tile``/``--overlap``/``--batch`` a model can use, and which tile rows each process of a
distributed run takes. The tiles themselves are :class:`satsynth.raster.TileGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from satsynth.contract import PREDICT_BATCH, tiling_problems
from satsynth.errors import SatSynthError
from satsynth.predict.aoi import AreaOfInterest, bounds_to_window
from satsynth.raster import TileGrid, crs_name, fmt_coord, quiet_georef_warnings

if TYPE_CHECKING:
    from pathlib import Path

    from satsynth.predict.forward import Forward


@dataclass
class Region:
    """A window of a dataset's pixel grid: where to predict and what the output covers."""

    row: int
    col: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def predict_region(src: Any, box: tuple[float, float, float, float] | None,
                   aoi: AreaOfInterest | None, image: Path) -> Region:
    """The window of the image to predict: all of it, or the part under ``--extent`` (``box``,
    in the image's CRS) and the ``--mask`` polygons' bounds (``aoi``).

    Args:
        src: the open image.
        box: ``(xmin, ymin, xmax, ymax)`` or None.
        aoi: the mask's polygons or None.
        image: the image's path, named in errors.

    Returns:
        The region; a one-line error when the extent or the mask misses the image.
    """
    with quiet_georef_warnings():
        transform, bounds = src.transform, tuple(src.bounds)
    r0, c0, r1, c1 = 0, 0, src.height, src.width
    b = ", ".join(fmt_coord(v) for v in bounds)
    if box is not None:
        w = bounds_to_window(box, transform, src.width, src.height)
        if w is None:
            raise SatSynthError(f"--extent {', '.join(fmt_coord(v) for v in box)} does not overlap "
                                f"the image (its bounds are {b} in {crs_name(src.crs)})", image)
        r0, c0, r1, c1 = w[0], w[1], w[0] + w[2], w[1] + w[3]
    if aoi is not None:
        w = bounds_to_window(aoi.bounds, transform, src.width, src.height)
        if w is None or not aoi.intersects_box(*bounds):
            raise SatSynthError(f"the --mask polygons ({aoi.path.name}) do not overlap the image "
                                f"(its bounds are {b} in {crs_name(src.crs)})", image)
        r0, c0 = max(r0, w[0]), max(c0, w[1])
        r1, c1 = min(r1, w[0] + w[2]), min(c1, w[1] + w[3])
        if r1 <= r0 or c1 <= c0:
            raise SatSynthError("--extent and the --mask polygons do not overlap each other "
                                "on the image", image)
    return Region(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class TilePlan:
    """How the tiles of a region are run, fixed once the model is loaded: the forward and its
    device, the tiling (checked by :func:`check_tiling`), the class index -> id table and the
    area of interest (tiles outside it are not run)."""

    forward: Forward
    device: Any
    num_classes: int
    tile: int
    overlap: int
    batch: int
    multiple: int
    lut: np.ndarray
    aoi: AreaOfInterest | None = None

    def grid(self, region: Region) -> TileGrid:
        """The tiles over ``region`` (shrunk for a region smaller than one tile)."""
        return TileGrid.for_region(region.height, region.width, self.tile, self.overlap,
                                   self.multiple)


def check_tiling(tile: int, overlap: int, batch: int, multiple: int, arch: str) -> None:
    """One clear error for tile/overlap/batch values the model or the blending cannot use (the
    contract's rule, :func:`satsynth.contract.tiling_problems`)."""
    problems = tiling_problems(tile, overlap, batch, multiple, arch)
    if problems:
        raise SatSynthError(problems[0])


def device_batch(batch: int, device: Any) -> int:
    """``--batch``, or for 0 (the default) the device type's (:data:`PREDICT_BATCH`): one tile at
    a time on a CPU, where a bigger batch only costs memory; 8 on a GPU."""
    if batch:
        return batch
    return PREDICT_BATCH.get(getattr(device, "type", str(device)), PREDICT_BATCH["cuda"])


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
