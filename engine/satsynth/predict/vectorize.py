"""Class polygons streamed into a GeoPackage, block row by block row.

Each written block row is polygonized with ``rasterio.features.shapes`` in pixel coordinates
(exact integers). Pieces touching the block's bottom edge may continue in the next block: they
are held back, linked to the next block's pieces of the same class across the edge (by the pixel
centres on both sides), and each region is unioned once, when it is complete, so every output
polygon is one whole connected region, as if the raster had been polygonized at once. Finished polygons are moved to the raster's CRS, optionally
simplified and filtered by area, and appended to the layer. Their QGIS style (categorized by
class, with the class table's names and colours) goes beside the GeoPackage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.contract import OUTPUT_MARK
from satsynth.data.classes import CLASS_ID_FIELD, IGNORE_INDEX, ClassTable, write_qml
from satsynth.errors import SatSynthError, system_error
from satsynth.raster import metres_per_unit

log = logging.getLogger("satsynth")

_EMPTY: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=object))
#: Metres per degree of latitude, to turn --simplify metres into degrees for geographic CRSs.
M_PER_DEGREE = 111_320.0


@dataclass
class _Region:
    """One connected region of one class, as the pieces found in successive blocks."""

    value: int
    pieces: list[Any]  # polygons in pixel coordinates
    edge: list[Any]  # the pieces touching the last block's bottom edge


def _dissolve(regions: list[_Region]) -> tuple[np.ndarray, np.ndarray]:
    """One polygon per region: its pieces unioned (once, when the region is complete)."""

    values: list[int] = []
    geoms: list[Any] = []
    for r in regions:
        parts = r.pieces if len(r.pieces) == 1 else _union_pieces(r.pieces)
        values.extend([r.value] * len(parts))
        geoms.extend(parts)
    return np.asarray(values, dtype=np.int32), np.array(geoms, dtype=object).reshape(-1)


def _union_pieces(pieces: list[Any]) -> list[Any]:
    """Union of the pieces of one region. A piece's holes cannot reach a block edge, so they stay
    holes: only the outer rings are overlaid (fast even for pieces with thousands of holes)."""
    import shapely

    arr = np.array(pieces, dtype=object)
    outer = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(arr)))
    if outer.geom_type != "Polygon":  # not one connected region: fall back to a full union
        full = shapely.union_all(arr)
        return [p for p in shapely.get_parts(full) if p.geom_type == "Polygon"]
    holes = list(outer.interiors) + [ring for p in pieces for ring in p.interiors]
    return [shapely.Polygon(outer.exterior, holes)]


class StreamingVectorizer:
    """Polygonizes consecutive full-width blocks of a class-id raster into a GeoPackage layer
    with ``class_id``, ``class_name``, ``pixels`` and ``area_m2``; :meth:`close` also writes
    their class style to ``style`` (the ``.qml`` beside the GeoPackage, see
    ``contract.style_path``; None: no style, another output's serves them)."""

    def __init__(self, path: Path, *, crs: Any, transform: Any, table: ClassTable,
                 layer: str, simplify: float = 0.0, min_area: float = 0.0,
                 style: Path | None = None) -> None:
        self.path = Path(path)
        self.table = table
        self.style = Path(style) if style is not None else None
        self.crs = crs
        self.transform = transform
        self.layer = layer
        self.nodata = IGNORE_INDEX
        self.names = {c.id: c.name for c in table.classes}
        self.min_area = float(min_area)
        self.features = 0
        self._created = False
        # regions touching the last block's bottom edge (they may continue below)
        self._groups: list[_Region] = []
        self._last_row: np.ndarray | None = None
        self._crs_wkt = crs.to_wkt() if crs is not None else None
        self._equal_area: Any = None
        a, b, c, d, e, f = transform[:6]
        self._m = np.array([[a, d], [b, e]], dtype=np.float64)
        self._t = np.array([c, f], dtype=np.float64)
        if crs is None:
            self._area_factor: float | None = None  # areas in pixels (no ground units)
            self._tol = float(simplify)
        elif crs.is_geographic:
            self._area_factor = None  # areas in an equal-area projection
            self._tol = float(simplify) / M_PER_DEGREE
        else:
            self._area_factor = metres_per_unit(crs) ** 2
            self._tol = float(simplify) / metres_per_unit(crs)

    def add_block(self, row: int, ids: np.ndarray, last: bool = False) -> None:
        """Polygonize rows ``row .. row + len(ids)`` (the next block); ``last`` ends the raster."""
        import shapely
        from rasterio.features import shapes
        from rasterio.transform import Affine

        h = ids.shape[0]
        values, geoms = _EMPTY
        if (ids != self.nodata).any():
            found = shapes(ids, mask=ids != self.nodata, connectivity=4,
                           transform=Affine.translation(0, row))
            values, geoms = _polygons(found)
        bounds = shapely.bounds(geoms).reshape(-1, 4)
        at_top = bounds[:, 1] <= row
        at_bottom = (bounds[:, 3] >= row + h) & (not last)
        # link the open regions above with this block's pieces along the shared edge
        opened, top = self._groups, np.flatnonzero(at_top) if self._groups else np.zeros(0, int)
        parent = list(range(len(opened) + len(top)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for g, t in self._links(row, ids[0], geoms[top]):
            parent[find(g)] = find(len(opened) + t)
        merged: dict[int, _Region] = {}
        for gi, grp in enumerate(opened):
            merged.setdefault(find(gi), _Region(grp.value, [], [])).pieces.extend(grp.pieces)
        for ti, pi in enumerate(top):
            reg = merged.setdefault(find(len(opened) + ti), _Region(int(values[pi]), [], []))
            reg.pieces.append(geoms[pi])
            if at_bottom[pi]:
                reg.edge.append(geoms[pi])
        regions = list(merged.values())
        linked = np.zeros(len(values), dtype=bool)
        linked[top] = True
        for pi in np.flatnonzero(~linked):
            edge = [geoms[pi]] if at_bottom[pi] else []
            regions.append(_Region(int(values[pi]), [geoms[pi]], edge))
        self._groups = [r for r in regions if r.edge]
        self._last_row = ids[-1].copy()
        self._write(*_dissolve([r for r in regions if not r.edge]))

    def _links(self, row: int, first: np.ndarray, top: np.ndarray) -> list[tuple[int, int]]:
        """(open region, top piece) pairs sharing an edge at ``row``: where the pixels just above
        and just below have the same class, the pieces covering them belong together."""
        if not self._groups or len(top) == 0 or self._last_row is None:
            return []
        cols = np.flatnonzero((self._last_row == first) & (first != self.nodata))
        if len(cols) == 0:
            return []
        edge = [g for grp in self._groups for g in grp.edge]
        owner = np.array([i for i, grp in enumerate(self._groups) for _ in grp.edge])
        piece_above = self._piece_row(edge, row - 1, first.shape[0])[cols]
        below = self._piece_row(list(top), row, first.shape[0])[cols]
        ok = (piece_above >= 0) & (below >= 0)
        pairs = zip(owner[piece_above[ok]], below[ok], strict=True)
        return list({(int(a), int(b)) for a, b in pairs})

    @staticmethod
    def _piece_row(pieces: list[Any], row: int, width: int) -> np.ndarray:
        """Index of the piece covering each pixel of one row (-1 where none)."""
        import shapely
        from rasterio.features import rasterize
        from rasterio.transform import Affine

        # clip to the row first: big pieces with many holes become a few small rectangles
        clipped = shapely.clip_by_rect(np.array(pieces, dtype=object), 0, row, width, row + 1)
        keep = np.flatnonzero(~shapely.is_empty(clipped))
        if len(keep) == 0:
            return np.full(width, -1, dtype=np.int32)
        return rasterize(((clipped[i], int(i)) for i in keep), out_shape=(1, width),
                         transform=Affine.translation(0, row), fill=-1, dtype="int32")[0]

    def _to_crs(self, xy: np.ndarray) -> np.ndarray:
        return xy @ self._m + self._t

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
        if self._equal_area is None:  # Lambert azimuthal equal-area around the first polygons
            import pyproj

            x0, y0, x1, y1 = shapely.total_bounds(geoms)
            geog = pyproj.CRS.from_wkt(self._crs_wkt)
            laea = pyproj.CRS.from_proj4(
                f"+proj=laea +lat_0={(y0 + y1) / 2} +lon_0={(x0 + x1) / 2} "
                f"+a={geog.ellipsoid.semi_major_metre} +rf={geog.ellipsoid.inverse_flattening}")
            self._equal_area = pyproj.Transformer.from_crs(geog, laea, always_xy=True)
        tr = self._equal_area

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))

        return shapely.area(shapely.transform(geoms, project))

    def _frame(self, values: np.ndarray, geoms: np.ndarray, pixels: np.ndarray,
               area: np.ndarray) -> Any:
        import geopandas as gpd

        return gpd.GeoDataFrame(
            {CLASS_ID_FIELD: values.astype(np.int32),
             "class_name": [self.names.get(int(v), f"class {v}") for v in values],
             "pixels": pixels.astype(np.int64),
             "area_m2": area.astype(np.float64)},
            geometry=gpd.GeoSeries(geoms, crs=self._crs_wkt), crs=self._crs_wkt)

    def _append(self, values: np.ndarray, geoms: np.ndarray, pixels: np.ndarray,
                area: np.ndarray) -> None:
        from pyogrio import write_dataframe

        gdf = self._frame(values, geoms, pixels, area)
        try:
            mark = {} if self._created else {"dataset_metadata": {OUTPUT_MARK: "polygons"}}
            write_dataframe(gdf, self.path, layer=self.layer, driver="GPKG",
                            append=self._created, geometry_type="Polygon", **mark)
        except Exception as exc:  # noqa: BLE001 - GDAL write errors come in many types
            full = system_error(exc, [str(self.path)])  # a full disk: say so, not SQLite's words
            raise (SatSynthError(full) if full else
                   SatSynthError(f"cannot write polygons ({exc})", self.path)) from None
        self._created = True
        self.features += len(gdf)

    def close(self) -> None:
        """Write the polygons still open, make sure the layer exists (even if empty) and write
        its style."""
        self._write(*_dissolve(self._groups))
        self._groups = []
        if not self._created:
            empty = np.array([], dtype=np.int32)
            self._append(empty, np.array([], dtype=object), empty.astype(np.int64),
                         empty.astype(np.float64))
        if self.style is not None:
            write_qml(self.style, self.table)


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
    factor = metres_per_unit(crs)
    return f"{crs.linear_units} (factor {factor:g} m)" if not math.isclose(factor, 1.0) else "metres"
