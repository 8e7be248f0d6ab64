"""Class polygons streamed into a GeoPackage, block row by block row.

Each written block row is polygonized with ``rasterio.features.shapes`` in pixel coordinates
(exact integers). Polygons touching the block's bottom edge may continue in the next block: they
are held back and merged (``shapely.union_all``) with the next block's polygons of the same class
that touch its top edge, so every output polygon is one whole connected region, as if the raster
had been polygonized at once. Finished polygons are moved to the raster's CRS, optionally
simplified and filtered by area, and appended to the layer.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import ClassTable
from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

_EMPTY: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=object))
#: Metres per degree of latitude, to turn --simplify metres into degrees for geographic CRSs.
M_PER_DEGREE = 111_320.0


class StreamingVectorizer:
    """Polygonizes consecutive full-width blocks of a class-id raster into a GeoPackage layer
    with ``class_id``, ``class_name``, ``pixels`` and ``area_m2``."""

    def __init__(self, path: Path, *, crs: Any, transform: Any, table: ClassTable,
                 layer: str, simplify: float = 0.0, min_area: float = 0.0,
                 nodata: int = 255) -> None:
        self.path = Path(path)
        self.crs = crs
        self.transform = transform
        self.layer = layer
        self.nodata = nodata
        self.names = {c.id: c.name for c in table.classes}
        self.min_area = float(min_area)
        self.features = 0
        self._created = False
        # class ids and polygons touching the last block's bottom edge (may continue below)
        self._open: tuple[np.ndarray, np.ndarray] = _EMPTY
        self._crs_wkt = crs.to_wkt() if crs is not None else None
        a, b, c, d, e, f = transform[:6]
        self._m = np.array([[a, d], [b, e]], dtype=np.float64)
        self._t = np.array([c, f], dtype=np.float64)
        if crs is None:
            self._area_factor: float | None = None  # areas in pixels (no ground units)
            self._tol = float(simplify)
        elif crs.is_geographic:
            import pyproj

            self._geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
            self._area_factor = None
            self._tol = float(simplify) / M_PER_DEGREE
        else:
            self._area_factor = crs.linear_units_factor[1] ** 2
            self._tol = float(simplify) / crs.linear_units_factor[1]

    def add_block(self, row: int, ids: np.ndarray, last: bool = False) -> None:
        """Polygonize rows ``row .. row + len(ids)`` (the next block); ``last`` ends the raster."""
        import shapely
        from rasterio.features import shapes
        from rasterio.transform import Affine

        valid = ids != self.nodata
        values, geoms = _EMPTY
        if valid.any():
            found = shapes(ids, mask=valid, connectivity=4, transform=Affine.translation(0, row))
            values, geoms = _polygons(found)
        at_top = shapely.bounds(geoms)[:, 1] <= row
        mv, mg = self._merge(*self._open, values[at_top], geoms[at_top])
        values = np.concatenate([mv, values[~at_top]])
        geoms = np.concatenate([mg, geoms[~at_top]])
        carry = shapely.bounds(geoms)[:, 3] >= row + ids.shape[0]
        if last:
            carry[:] = False
        self._open = (values[carry], geoms[carry])
        self._write(values[~carry], geoms[~carry])

    def _to_crs(self, xy: np.ndarray) -> np.ndarray:
        return xy @ self._m + self._t

    @staticmethod
    def _merge(av: np.ndarray, ag: np.ndarray, bv: np.ndarray, bg: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Union polygons of the same class across the block edge (exact integer coordinates)."""
        import shapely

        if len(av) == 0 or len(bv) == 0:
            return np.concatenate([av, bv]), np.concatenate([ag, bg])
        values, geoms = np.concatenate([av, bv]), np.concatenate([ag, bg])
        out_v: list[np.ndarray] = []
        out_g: list[np.ndarray] = []
        for v in np.unique(values):
            same = geoms[values == v]
            parts = same if len(same) == 1 else shapely.get_parts(shapely.union_all(same))
            parts = parts[shapely.get_type_id(parts) == 3]  # polygons
            out_v.append(np.full(len(parts), v, dtype=np.int32))
            out_g.append(parts)
        return np.concatenate(out_v), np.concatenate(out_g)

    def _write(self, values: np.ndarray, pix_geoms: np.ndarray) -> None:
        import shapely

        if len(values) == 0:
            return
        pixels = np.rint(shapely.area(pix_geoms)).astype(np.int64)
        geoms = shapely.transform(pix_geoms, self._to_crs)
        if self._tol > 0:
            geoms = shapely.simplify(geoms, self._tol, preserve_topology=True)
        area = self._areas(geoms)
        keep = area >= self.min_area if self.min_area > 0 else np.ones(len(geoms), dtype=bool)
        if keep.any():
            self._append(values[keep], geoms[keep], pixels[keep], area[keep])

    def _areas(self, geoms: np.ndarray) -> np.ndarray:
        import shapely

        if self.crs is None:
            return shapely.area(geoms)
        if self._area_factor is not None:
            return shapely.area(geoms) * self._area_factor
        return np.array([abs(self._geod.geometry_area_perimeter(g)[0]) for g in geoms])

    def _frame(self, values: np.ndarray, geoms: np.ndarray, pixels: np.ndarray,
               area: np.ndarray) -> Any:
        import geopandas as gpd

        return gpd.GeoDataFrame(
            {"class_id": values.astype(np.int32),
             "class_name": [self.names.get(int(v), f"class {v}") for v in values],
             "pixels": pixels.astype(np.int64),
             "area_m2": area.astype(np.float64)},
            geometry=gpd.GeoSeries(geoms, crs=self._crs_wkt), crs=self._crs_wkt)

    def _append(self, values: np.ndarray, geoms: np.ndarray, pixels: np.ndarray,
                area: np.ndarray) -> None:
        from pyogrio import write_dataframe

        gdf = self._frame(values, geoms, pixels, area)
        try:
            write_dataframe(gdf, self.path, layer=self.layer, driver="GPKG",
                            append=self._created, geometry_type="Polygon")
        except Exception as exc:  # noqa: BLE001 - GDAL write errors come in many types
            raise SatSynthError(f"cannot write polygons ({exc})", self.path) from None
        self._created = True
        self.features += len(gdf)

    def close(self) -> None:
        """Write the polygons still open and make sure the layer exists (even if empty)."""
        self._write(*self._open)
        self._open = _EMPTY
        if not self._created:
            empty = np.array([], dtype=np.int32)
            self._append(empty, np.array([], dtype=object), empty.astype(np.int64),
                         empty.astype(np.float64))


def _polygons(found: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class values and shapely polygons of ``rasterio.features.shapes`` output, built in one
    vectorized call (much faster than one ``shapely.geometry.shape`` per polygon)."""
    import shapely

    values: list[int] = []
    coords: list[Any] = []
    ring_sizes: list[int] = []
    poly_of_ring: list[int] = []
    for geom, value in found:
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_sizes.append(len(ring))
            poly_of_ring.append(len(values))
        values.append(int(value))
    if not values:
        return _EMPTY
    ring_of_coord = np.repeat(np.arange(len(ring_sizes)), ring_sizes)
    rings = shapely.linearrings(np.asarray(coords, dtype=np.float64), indices=ring_of_coord)
    polys = shapely.polygons(rings, indices=np.asarray(poly_of_ring))
    return np.asarray(values, dtype=np.int32), polys


def simplify_tolerance_note(crs: Any) -> str:
    """How ``--simplify`` metres are applied for this CRS (for logs and docs)."""
    if crs is None:
        return "pixels (the image has no CRS)"
    if crs.is_geographic:
        return f"degrees (metres / {M_PER_DEGREE:.0f})"
    unit = crs.linear_units_factor
    return f"{unit[0]} (factor {unit[1]:g} m)" if not math.isclose(unit[1], 1.0) else "metres"
