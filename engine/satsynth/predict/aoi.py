"""The area to predict: an ``--extent`` box and/or an ``--mask`` polygon layer, as a window of the
raster grid and a per-strip inside/outside mask."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")


def parse_extent(extent: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``"xmin,ymin,xmax,ymax"`` (or 4 numbers) -> a checked tuple."""
    if extent is None or extent == "":
        return None
    try:
        parts = [float(v) for v in (extent.split(",") if isinstance(extent, str) else extent)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts):
        raise SatSynthError(f"--extent {extent!r}: expected four numbers xmin,ymin,xmax,ymax in "
                            "the image's CRS")
    xmin, ymin, xmax, ymax = parts
    if xmin >= xmax or ymin >= ymax:
        raise SatSynthError(f"--extent {extent!r}: xmin must be < xmax and ymin < ymax")
    return xmin, ymin, xmax, ymax


def bounds_to_window(bounds: tuple[float, float, float, float], transform: Any, width: int,
                     height: int) -> tuple[int, int, int, int] | None:
    """Pixel window ``(row_off, col_off, height, width)`` of the raster covering ``bounds``
    (rounded outwards, clipped); ``None`` when they do not overlap the raster."""
    xmin, ymin, xmax, ymax = bounds
    inv = ~transform
    cols, rows = zip(*(inv @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)), strict=True)
    eps = 1e-6
    c0 = max(0, math.floor(min(cols) + eps))
    c1 = min(width, math.ceil(max(cols) - eps))
    r0 = max(0, math.floor(min(rows) + eps))
    r1 = min(height, math.ceil(max(rows) - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, c0, r1 - r0, c1 - c0


class AreaOfInterest:
    """Polygons of a vector layer in the raster's CRS: which tiles to run, which pixels to keep."""

    def __init__(self, path: str | Path, raster_crs: Any) -> None:
        import geopandas as gpd
        import shapely

        path = Path(path)
        if not path.exists():
            raise SatSynthError("mask (area of interest) file not found", path)
        if raster_crs is None:
            raise SatSynthError("the image has no CRS, so a --mask layer cannot be placed on it",
                                path)
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # noqa: BLE001 - pyogrio/fiona raise many types
            raise SatSynthError(f"cannot read the mask layer ({exc})", path) from None
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        gdf = gdf[gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
        if gdf.empty:
            raise SatSynthError("the mask layer has no polygons", path)
        if gdf.crs is None:
            log.warning("%s has no CRS: assuming the image's CRS", path.name)
        else:
            gdf = gdf.to_crs(raster_crs.to_wkt())
        self.path = path
        self.geoms = shapely.make_valid(np.asarray(gdf.geometry.values))
        self.union = shapely.union_all(self.geoms)
        shapely.prepare(self.union)
        self.tree = shapely.STRtree(self.geoms)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(self.union.bounds)  # type: ignore[return-value]

    def intersects_box(self, xmin: float, ymin: float, xmax: float, ymax: float) -> bool:
        """True when the polygons touch the box (so a tile there is worth running)."""
        import shapely

        return bool(self.union.intersects(shapely.box(xmin, ymin, xmax, ymax)))

    def inside(self, transform: Any, height: int, width: int) -> np.ndarray:
        """``(height, width)`` bool array, True for pixels whose centre is inside a polygon."""
        import shapely
        from rasterio.features import geometry_mask
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(height, width, transform)
        box = shapely.box(min(west, east), min(south, north), max(west, east), max(south, north))
        geoms = self.geoms[self.tree.query(box)]
        if len(geoms) == 0:
            return np.zeros((height, width), dtype=bool)
        return geometry_mask(list(geoms), out_shape=(height, width), transform=transform,
                             invert=True)


def tile_bounds(transform: Any, row: int, col: int, height: int, width: int
                ) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of a pixel window."""
    xs, ys = zip(*(transform @ (c, r) for c in (col, col + width) for r in (row, row + height)), strict=True)
    return min(xs), min(ys), max(xs), max(ys)
