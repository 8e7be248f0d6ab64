"""Small georeferenced rasters for the data-layer tests (UTM 40N, 0.5 m)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

UTM = CRS.from_epsg(32640)
ORIGIN = Affine(0.5, 0, 330_000, 0, -0.5, 2_790_000)


def write_raster(path: Path, data: np.ndarray, crs=UTM, transform=ORIGIN, **kw) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array; ``crs=None`` writes no georeference."""
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype, crs=crs,
                   transform=transform if crs is not None else None)
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path
