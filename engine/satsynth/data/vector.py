"""Vector labels: a layer with a class field, rasterized onto an image grid window by window.

The features are reprojected to the image CRS (geopandas), lines and points are buffered by a width
in metres (in a local metric CRS when the image CRS is geographic), and the shapes are burnt with
:func:`rasterio.features.rasterize`, largest first so that small features stay visible.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import ClassInfo, ClassTable, default_color
from satsynth.data.labels import NODATA_CODE, check_georef_match
from satsynth.errors import SatSynthError
from satsynth.raster import Grid, crs_name, fmt_bounds, metres_per_unit

log = logging.getLogger("satsynth")


#: Column holding the class when no class field is given (every feature is one class).
SINGLE_CLASS_FIELD = "__satsynth_class__"


def load_vector(path: str | Path, layer: str | None, class_field: str | None) -> Any:
    """Read a vector layer (GeoPackage, GeoJSON, Shapefile, ...) with clear errors.

    Args:
        path (`str` or `Path`):
            The vector file.
        layer (`str`, *optional*):
            The layer to read; the file's first by default.
        class_field (`str`, *optional*):
            The field holding class names or ids; without it every feature gets one class named
            after the file.

    Returns:
        `geopandas.GeoDataFrame`: the features with a geometry and a class value: the class field
        and the geometry column.

    Raises:
        `SatSynthError`: the file, layer or field is missing (listing what there is), or no feature
        has a geometry and a value.
    """
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise SatSynthError("vector file not found", path)
    try:
        layers = [str(n) for n, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # noqa: BLE001 - any driver error means the file is unusable
        raise SatSynthError(f"cannot read vector labels: not a vector format GDAL can open, or "
                            f"damaged ({exc})", path) from None
    if layer is not None and layer not in layers:
        raise SatSynthError(f"no layer '{layer}'; the layers are: {', '.join(layers)}", path)
    if layer is None and len(layers) > 1:
        log.warning("%s: %d layers (%s); using the first, '%s' (choose one with --layer)",
                    path.name, len(layers), ", ".join(layers), layers[0])
        layer = layers[0]
    try:
        gdf = gpd.read_file(path, layer=layer)
    except Exception as exc:  # noqa: BLE001
        raise SatSynthError(f"cannot read vector labels ({exc})", path) from None
    if not class_field:
        class_field = SINGLE_CLASS_FIELD
        gdf[class_field] = path.stem
        log.info("%s: no --class-field: every feature is class '%s'", path.name, path.stem)
    if class_field not in gdf.columns or class_field == gdf.geometry.name:
        fields = [c for c in gdf.columns if c != gdf.geometry.name]
        raise SatSynthError(f"no field '{class_field}'; the fields are: {', '.join(fields)}", path)
    keep = gdf.geometry.notna() & ~gdf.geometry.is_empty
    nulls = gdf[class_field].isna() & keep
    if nulls.any():
        log.warning("%s: %d features with an empty '%s' skipped", path.name, int(nulls.sum()),
                    class_field)
    gdf = gdf[keep & ~nulls]
    if len(gdf) == 0:
        raise SatSynthError(f"no features with a geometry and a '{class_field}' value", path)
    return gdf[[class_field, gdf.geometry.name]].copy()


def normalize_value(v: Any) -> int | str:
    """A class field value as an int id (when it is one) or a stripped name."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if math.isfinite(v) and float(v).is_integer():
            return int(v)
        return str(v)
    s = str(v).strip()
    try:
        return int(s)
    except ValueError:
        return s


def field_values(gdf: Any, class_field: str) -> Counter:
    """The feature count of each class value, normalized (whole numbers as `int`, names as `str`).

    Args:
        gdf (`geopandas.GeoDataFrame`):
            The features (:func:`load_vector`).
        class_field (`str`):
            The class field.

    Returns:
        `Counter`: class value -> feature count.
    """
    return Counter(normalize_value(v) for v in gdf[class_field].tolist())


def resolve_classes(values: Counter, table: ClassTable | None, background: str | None,
                    where: str) -> tuple[ClassTable, dict[int | str, int], int | None]:
    """The class table, each value's class index, and the index for uncovered pixels.

    Without a ``table`` one is inferred: ids keep their values, names get ids in alphabetical
    order, and the background (when not ignored) is id 0.

    Args:
        values (`Counter`):
            The class field's values (names or ids) with their feature counts
            (:func:`field_values`).
        table (`ClassTable`, *optional*):
            The class table given (``--classes``).
        background (`str`, *optional*):
            The class of pixels no feature covers; `None` ignores them (``--background-ignore``).
        where (`str`):
            The vector file, for the messages.

    Returns:
        `tuple[ClassTable, dict[int | str, int], int | None]`: the table, value -> class index, and
        the background's class index (`None`: ignored).

    Raises:
        `SatSynthError`: values that are not in the given table, ids outside 0..254, or no class
        for the background.
    """
    if table is None:
        ints = all(isinstance(v, int) for v in values)
        if ints:
            bad = sorted(v for v in values if not 0 <= v <= 254)
            if bad:
                raise SatSynthError(
                    f"class ids must be 0..254, but the class field holds {bad[:5]}"
                    f"{' ...' if len(bad) > 5 else ''}: is it a feature id? Use a field with class "
                    "names or ids, give a class table, or leave out --class-field to burn every "
                    "feature as one class", where)
            ids = set(values) | ({0} if background is not None else set())
            names = {0: background} if background is not None else {}
            table = ClassTable([ClassInfo(v, names.get(v, f"class {v}"),
                                          (0, 0, 0) if v == 0 and background else default_color(i))
                                for i, v in enumerate(sorted(ids))])
        else:
            table = ClassTable.from_names([str(v) for v in values], background=background)
    lut: dict[int | str, int] = {}
    missing: list[tuple[Any, int]] = []
    by_name = {c.name.lower(): i for i, c in enumerate(table.classes)}
    by_id = {c.id: i for i, c in enumerate(table.classes)}
    for v, n in values.items():
        if str(v).lower() in by_name:
            lut[v] = by_name[str(v).lower()]
        elif isinstance(v, int) and v in by_id:
            lut[v] = by_id[v]
        else:
            missing.append((v, n))
    if missing:
        missing.sort(key=lambda vn: -vn[1])
        listed = ", ".join(f"{v!r} ({n} features)" for v, n in missing[:20])
        raise SatSynthError(
            f"class field values not in the class table: {listed}; the classes are: "
            f"{', '.join(f'{c.id} {c.name}' for c in table.classes)}", where)
    bg_index: int | None = None
    if background is not None:
        if background.lower() in by_name:
            bg_index = by_name[background.lower()]
        elif 0 in by_id:
            bg_index = by_id[0]
            log.info("pixels no feature covers get class id 0 '%s'", table.classes[bg_index].name)
        else:
            raise SatSynthError(
                f"the class table has no class '{background}' and no id 0 for the pixels no "
                "feature covers: add one, name it with --background NAME, or use "
                "--background-ignore", where)
    return table, lut, bg_index


class VectorLabelReader:
    """Rasterizes one vector layer on an image grid, window by window (codes = class indices)."""

    kind = "vector"

    def __init__(self, gdf: Any, class_field: str, value_to_index: dict[int | str, int],
                 vector_path: str | Path, image_path: str | Path, image_grid: Grid,
                 line_buffer: float = 0.0, all_touched: bool = False,
                 background_index: int | None = None) -> None:
        import shapely

        self.path = Path(vector_path)
        self.image_path = Path(image_path)
        self.grid = image_grid
        self.all_touched = bool(all_touched)
        self.fill = NODATA_CODE if background_index is None else int(background_index)
        check_georef_match(self.image_path, image_grid, self.path, gdf.crs, what="vector labels")
        gdf = self._check_claimed_crs(gdf)
        if image_grid.georeferenced and gdf.crs != image_grid.crs:
            target = image_grid.crs.to_wkt()
            try:
                gdf = gdf.to_crs(target)
            except Exception:  # noqa: BLE001 - its message may dump a CRS definition
                raise SatSynthError(f"cannot reproject the features from {crs_name(gdf.crs)} to "
                                    f"the image's {crs_name(image_grid.crs)}",
                                    self.path) from None
            log.info("%s: features reprojected to the image CRS %s", self.path.name,
                     crs_name(image_grid.crs))
        geoms = np.asarray(gdf.geometry.values, dtype=object)
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            log.info("%s: %d invalid geometries repaired (make_valid)", self.path.name,
                     int(bad.sum()))
            geoms[bad] = shapely.make_valid(geoms[bad])
        if line_buffer and line_buffer > 0:
            geoms = self._buffer_lines(gdf, geoms, float(line_buffer))
        values = np.asarray([value_to_index[normalize_value(v)] for v in gdf[class_field]],
                            dtype=np.int16)
        ok = ~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)
        geoms, values = geoms[ok], values[ok]
        # largest first, so smaller features drawn later stay visible
        order = np.argsort(-shapely.area(geoms), kind="stable")
        self.geoms, self.values = geoms[order], values[order]
        self.tree = shapely.STRtree(self.geoms)
        self._check_overlap()

    def _check_claimed_crs(self, gdf: Any) -> Any:
        """Catch coordinates that cannot be in the geographic CRS the file claims.

        GeoJSON without a CRS is read as WGS 84, yet many tools write projected coordinates into
        it. When such coordinates fall inside the image they are taken to be in the image's CRS
        (with a warning); otherwise the file is refused.
        """
        if gdf.crs is None or not gdf.crs.is_geographic:
            return gdf
        x0, y0, x1, y1 = (float(v) for v in gdf.total_bounds)
        if -360.0 <= x0 and x1 <= 360.0 and -90.0 <= y0 and y1 <= 90.0:
            return gdf
        ib = self.grid.bounds
        if x0 < ib[2] and x1 > ib[0] and y0 < ib[3] and y1 > ib[1] and not self.grid.crs.is_geographic:
            log.warning(
                "%s: the file says %s but its coordinates (x %.6g..%.6g, y %.6g..%.6g) are not "
                "longitude/latitude; they fall inside the image, so they are taken to be in the "
                "image's CRS %s (fix the file's CRS to silence this)", self.path.name,
                crs_name(gdf.crs), x0, x1, y0, y1, crs_name(self.grid.crs))
            return gdf.set_crs(self.grid.crs.to_wkt(), allow_override=True)
        raise SatSynthError(
            f"the file says {crs_name(gdf.crs)} but its coordinates "
            f"({fmt_bounds((x0, y0, x1, y1))}) are not longitude/latitude: its CRS is wrong (assign the "
            "right one, e.g. with ogr2ogr -a_srs)", self.path)

    def _buffer_lines(self, gdf: Any, geoms: np.ndarray, metres: float) -> np.ndarray:
        import geopandas as gpd
        import shapely

        kinds = shapely.get_type_id(geoms)
        # 0 point, 1 linestring, 2 linearring, 4 multipoint, 5 multilinestring
        sel = np.isin(kinds, [0, 1, 2, 4, 5])
        if not sel.any():
            return geoms
        crs = self.grid.crs
        out = geoms.copy()
        if crs is None:
            log.warning("%s: not georeferenced: --line-buffer %.3g is taken in pixels",
                        self.path.name, metres)
            out[sel] = shapely.buffer(geoms[sel], metres)
        elif crs.is_geographic:
            part = gpd.GeoSeries(geoms[sel], crs=crs.to_wkt())
            local = part.estimate_utm_crs()
            out[sel] = np.asarray(part.to_crs(local).buffer(metres).to_crs(crs.to_wkt()).values,
                                  dtype=object)
            log.info("%s: %d lines/points buffered by %.3g m in %s", self.path.name,
                     int(sel.sum()), metres, local.name)
        else:
            out[sel] = shapely.buffer(geoms[sel], metres / metres_per_unit(crs))
            log.info("%s: %d lines/points buffered by %.3g m", self.path.name, int(sel.sum()),
                     metres)
        return out

    def _check_overlap(self) -> None:
        import shapely

        if len(self.geoms) == 0:
            raise SatSynthError("no features left to rasterize", self.path)
        fb = shapely.total_bounds(self.geoms)
        ib = self.grid.bounds
        if fb[0] >= ib[2] or fb[2] <= ib[0] or fb[1] >= ib[3] or fb[3] <= ib[1]:
            raise SatSynthError(
                f"the features do not overlap the image {self.image_path.name} at all (features "
                f"cover {fmt_bounds(tuple(fb))}; the image covers {fmt_bounds(ib)} in "
                f"{crs_name(self.grid.crs)})", self.path)

    def read_codes(self, window: Any) -> np.ndarray:
        """Class index per pixel of the window (``NODATA_CODE`` where no feature and no background)."""
        from rasterio.features import rasterize
        from rasterio.windows import bounds as window_bounds
        from rasterio.windows import transform as window_transform
        from shapely.geometry import box

        h, w = int(window.height), int(window.width)
        wt = window_transform(window, self.grid.transform)
        left, bottom, right, top = window_bounds(window, self.grid.transform)
        idx = np.sort(self.tree.query(box(min(left, right), min(bottom, top),
                                          max(left, right), max(bottom, top))))
        if len(idx) == 0:
            return np.full((h, w), self.fill, dtype=np.int64)
        out = rasterize(zip(self.geoms[idx], self.values[idx].tolist(), strict=True),
                        out_shape=(h, w), transform=wt, fill=self.fill,
                        all_touched=self.all_touched, dtype="int16")
        return out.astype(np.int64)

    def describe(self, code: int) -> str:
        return str(int(code))

    def close(self) -> None:
        pass
