"""Label readers: label values of any kind, read window by window on the image grid.

Every reader returns *codes* (int64) for a window of the image grid:

- class-id rasters: the label value itself;
- colour masks: the colour packed as ``r << 16 | g << 8 | b`` (paletted masks through their palette);
- vector layers: the model's class index (see :mod:`satsynth.data.vector`);

and :data:`NODATA_CODE` where there is no label (nodata, alpha 0, outside the label raster).
A :class:`CodeMap` then turns codes into class indices (255 = ignore) using the class table.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.errors import SatSynthError
from satsynth.raster import (
    Grid,
    crs_name,
    fmt_bounds,
    grid_of,
    open_raster,
    read_window,
    valid_mask,
)

log = logging.getLogger("satsynth")

NODATA_CODE = -1
_PALETTE_MISSING = 1 << 24  # code offset for palette indices that have no colour


def pack_rgb(rgb: tuple[int, int, int]) -> int:
    """(r, g, b) -> the colour code used for colour masks."""
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def code_to_hex(code: int) -> str:
    """A packed colour code (:func:`pack_rgb`) as ``#rrggbb``.

    Args:
        code (`int`):
            ``(r << 16) | (g << 8) | b``.

    Returns:
        `str`: e.g. ``#1f4e9c``.
    """
    return f"#{(code >> 16) & 255:02x}{(code >> 8) & 255:02x}{code & 255:02x}"


def describe_code(kind: str, code: int) -> str:
    """How a code is shown to the user in messages."""
    if kind == "colors":
        if code >= _PALETTE_MISSING:
            return f"palette index {code - _PALETTE_MISSING} (no colour in the palette)"
        return code_to_hex(code)
    return str(int(code))


#: Appended to :func:`describe_unknown`'s message: what the user can do about unknown values.
UNKNOWN_HINT = (" (add them to the class table, or list them under 'ignore_ids'/'ignore_colors' "
                "to skip those pixels)")


def describe_unknown(kind: str, bad: list[tuple[int, int]]) -> str:
    """The message for label codes that are not in the class table.

    Args:
        kind (`str`):
            The reader kind: ``raster`` (class ids) or ``colors`` (colour masks).
        bad (`list[tuple[int, int]]`):
            ``(code, pixel count)`` pairs, most frequent first, as :meth:`CodeMap.unknown` gives
            them.

    Returns:
        `str`: e.g. ``label values not in the class table: 7 (120 px), 9 (3 px)`` (colour masks:
        ``mask colours ...``, the first 20 colours).
    """
    what = "mask colours" if kind == "colors" else "label values"
    listed = ", ".join(f"{describe_code(kind, c)} ({n} px)" for c, n in bad[:20])
    more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    if kind == "colors" and len(bad) > 20:
        more += (" (so many colours usually mean a lossy mask, e.g. JPEG: masks must be "
                 "saved losslessly, as PNG or TIFF)")
    return f"{what} not in the class table: {listed}{more}"


def ignore_codes(kind: str, table: ClassTable | None) -> set[int]:
    """The codes that mean "not labeled" for a reader kind, before any class is looked up.

    Args:
        kind (`str`):
            The reader kind: ``raster``, ``colors`` or ``vector``.
        table (`ClassTable`, *optional*):
            The class table, whose ``ignore_ids`` (rasters) or ``ignore_colors`` (colour masks)
            are added.

    Returns:
        `set[int]`: the reader's nodata code, and for rasters the ignore value 255 and the table's
        ignore ids, for colour masks the table's ignore colours (packed).
    """
    codes = {NODATA_CODE}
    if kind == "raster":
        codes.add(IGNORE_INDEX)  # a raster label value that always means "ignore"
        if table is not None:
            codes.update(int(v) for v in table.ignore_ids)
    elif kind == "colors" and table is not None:
        codes.update(pack_rgb(c) for c in table.ignore_colors)
    return codes


def code_histogram(codes: np.ndarray) -> Counter:
    """The pixel count of each code.

    Args:
        codes (`np.ndarray`):
            Label codes of any shape.

    Returns:
        `Counter`: code -> pixel count.
    """
    if codes.size == 0:
        return Counter()
    lo, hi = int(codes.min()), int(codes.max())
    if lo >= NODATA_CODE and hi < 1 << 16:
        counts = np.bincount((codes + 1).ravel(), minlength=1)
        nz = np.flatnonzero(counts)
        return Counter({int(v - 1): int(counts[v]) for v in nz})
    vals, counts = np.unique(codes, return_counts=True)
    return Counter({int(v): int(n) for v, n in zip(vals, counts, strict=True)})


class CodeMap:
    """Maps reader codes to class indices (uint8, 255 = ignore)."""

    def __init__(self, kind: str, table: ClassTable) -> None:
        self.kind = kind
        self.table = table
        mapping: dict[int, int] = {}
        if kind == "raster":
            mapping = {c.id: i for i, c in enumerate(table.classes)}
        elif kind == "colors":
            for i, c in enumerate(table.classes):
                code = pack_rgb(c.color)
                if code in mapping:
                    other = table.classes[mapping[code]].name
                    raise SatSynthError(
                        f"classes '{other}' and '{c.name}' have the same colour {c.hex()}: colour "
                        "masks cannot tell them apart; give each class its own colour")
                mapping[code] = i
        elif kind == "vector":
            mapping = {i: i for i in range(table.num_classes)}
        else:
            raise ValueError(kind)
        self.ignore = ignore_codes(kind, table) - set(mapping)
        keys = sorted(set(mapping) | self.ignore)
        self._keys = np.asarray(keys, dtype=np.int64)
        self._vals = np.asarray([mapping.get(k, IGNORE_INDEX) for k in keys], dtype=np.uint8)
        self.known = set(mapping)

    def unknown(self, hist: Counter) -> list[tuple[int, int]]:
        """(code, pixel count) of codes that are neither a class nor ignore, most frequent first."""
        bad = [(c, n) for c, n in hist.items() if c not in self.known and c not in self.ignore]
        return sorted(bad, key=lambda cn: (-cn[1], cn[0]))

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """Class indices for ``codes``; anything unknown becomes ignore."""
        pos = np.searchsorted(self._keys, codes)
        pos = np.clip(pos, 0, len(self._keys) - 1)
        found = self._keys[pos] == codes
        return np.where(found, self._vals[pos], np.uint8(IGNORE_INDEX)).astype(np.uint8)


def _check_overlap(img: Grid, lab: Grid, image_path: Path, label_path: Path) -> float:
    """Fraction of the image covered by the label raster's footprint; refuses no overlap."""
    from rasterio.warp import transform_bounds

    try:
        lb = transform_bounds(lab.crs, img.crs, *lab.bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - a failed transform means the CRSs do not meet; the
        # library's message may hold a whole WKT/PROJJSON definition: name the CRSs instead
        raise SatSynthError(
            f"cannot transform the labels' extent from {crs_name(lab.crs)} to the image's "
            f"{crs_name(img.crs)}", label_path) from None
    ib = img.bounds
    w = min(ib[2], lb[2]) - max(ib[0], lb[0])
    h = min(ib[3], lb[3]) - max(ib[1], lb[1])
    if w <= 0 or h <= 0 or not np.isfinite(w * h):
        raise SatSynthError(
            f"the labels do not overlap the image {image_path.name} at all (labels cover "
            f"{fmt_bounds(lb)}, image covers {fmt_bounds(ib)} in {crs_name(img.crs)})",
            label_path)
    return float(min(1.0, w * h / max((ib[2] - ib[0]) * (ib[3] - ib[1]), 1e-30)))


def check_georef_match(image_path: Path, image_grid: Grid, label_path: Path, label_crs: Any,
                       what: str = "labels") -> None:
    """Refuse a pair where exactly one of image and labels has a CRS, saying which.

    Args:
        image_path (`Path`):
            The image, for the message.
        image_grid (`Grid`):
            The image's grid.
        label_path (`Path`):
            The labels, for the message.
        label_crs (`Any`):
            The labels' CRS (`None` when they have none).
        what (`str`, *optional*, defaults to `"labels"`):
            What the labels are, for the message.

    Raises:
        `SatSynthError`: one of the two is georeferenced and the other is not.
    """
    if image_grid.georeferenced and label_crs is None:
        raise SatSynthError(
            f"the {what} have no CRS (not georeferenced) but the image {image_path.name} is in "
            f"{crs_name(image_grid.crs)}: give both the same georeference", label_path)
    if not image_grid.georeferenced and label_crs is not None:
        raise SatSynthError(
            f"the image {image_path.name} has no CRS (not georeferenced) but the {what} are in "
            f"{crs_name(label_crs)}: give both the same georeference", label_path)


def check_label_grid(image_path: Path, image_grid: Grid, label_path: Path, label_grid: Grid,
                     on_image_grid: bool = False) -> float | None:
    """How a label raster meets its image (the rules of prepare and evaluate).

    ``on_image_grid``: the labels were drawn on the image's pixels (an annotation tool's export
    without georeference): taken on the image grid when the sizes are equal, refused otherwise,
    and refused for georeferenced labels that do not lie on the image's grid (the flag never
    overrides a georeference).

    Args:
        image_path (`Path`):
            The image, for the messages.
        image_grid (`Grid`):
            The image's grid.
        label_path (`Path`):
            The labels, for the messages.
        label_grid (`Grid`):
            The labels' grid.
        on_image_grid (`bool`, *optional*, defaults to `False`):
            ``--labels-on-image-grid``.

    Returns:
        `float` or `None`: `None` when the labels lie on the image grid (read as they are), else the
        fraction of the image they cover (they are warped onto the image grid).

    Raises:
        `SatSynthError`: the pair cannot be aligned (one georeferenced and one not, pixel-space
        pairs of different sizes) or does not overlap.
    """
    if on_image_grid:
        if label_grid.georeferenced and not label_grid.same_as(image_grid):
            raise SatSynthError(
                f"--labels-on-image-grid is for labels without a georeference, but these are "
                f"in {crs_name(label_grid.crs)} on another grid than the image "
                f"{image_path.name}: drop the flag (georeferenced labels are aligned by their "
                "georeference), or remove their georeference if they were drawn on the image's "
                "pixels", label_path)
        if label_grid.shape != image_grid.shape:
            raise SatSynthError(
                f"--labels-on-image-grid needs labels of the image's size: the labels are "
                f"{label_grid.width}x{label_grid.height} px, the image {image_path.name} "
                f"{image_grid.width}x{image_grid.height} px", label_path)
        return None
    if (image_grid.georeferenced and not label_grid.georeferenced
            and label_grid.shape == image_grid.shape):
        raise SatSynthError(
            f"the labels have no CRS (not georeferenced) but the image {image_path.name} is in "
            f"{crs_name(image_grid.crs)}; they have the image's size: if they were drawn on its "
            "pixels, add --labels-on-image-grid", label_path)
    check_georef_match(image_path, image_grid, label_path, label_grid.crs)
    if label_grid.same_as(image_grid):
        return None
    if not image_grid.georeferenced:
        raise SatSynthError(
            f"labels are {label_grid.width}x{label_grid.height} px but the image "
            f"{image_path.name} is {image_grid.width}x{image_grid.height} px, and neither is "
            "georeferenced, so they cannot be aligned: the sizes must match", label_path)
    return _check_overlap(image_grid, label_grid, image_path, label_path)


class RasterLabelReader:
    """Class-id rasters and colour masks, aligned to the image grid (warped if needed).

    ``on_image_grid``: see :func:`check_label_grid`."""

    def __init__(self, label_path: str | Path, image_path: str | Path, image_grid: Grid,
                 kind: str = "raster", on_image_grid: bool = False) -> None:
        self.path = Path(label_path)
        self.image_path = Path(image_path)
        self.grid = image_grid
        self.on_image_grid = on_image_grid
        self._src = open_raster(self.path, "label raster")
        self._vrt = None
        self._lut: np.ndarray | None = None
        try:
            self.kind, self.bands = self._decide_kind(kind)
            self._align()
        except BaseException:
            self.close()
            raise

    # --- set-up ------------------------------------------------------------------------------
    def _decide_kind(self, requested: str) -> tuple[str, list[int]]:
        src = self._src
        has_palette = src.count == 1 and _colormap(src) is not None
        if src.count >= 3:
            if requested == "raster":
                log.info("%s: %d bands, read as a colour-coded mask", self.path.name, src.count)
            return "colors", [1, 2, 3]
        if src.count != 1:
            raise SatSynthError(
                f"labels must be a single-band raster of class ids or an RGB colour mask; this "
                f"one has {src.count} bands", self.path)
        if requested == "auto" and has_palette:
            cmap = _colormap(src) or {}
            size = 256 if src.dtypes[0] == "uint8" else 65536
            lut = np.asarray([_PALETTE_MISSING + i for i in range(size)], dtype=np.int64)
            for i, rgba in cmap.items():
                if 0 <= i < size:
                    lut[i] = pack_rgb(rgba[:3])
            self._lut = lut
            return "colors", [1]
        dt = np.dtype(src.dtypes[0])
        if not np.issubdtype(dt, np.integer):
            raise SatSynthError(
                f"label raster has data type {src.dtypes[0]}; class ids must be integers", self.path)
        return "raster", [1]

    def _align(self) -> None:
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        lab = grid_of(self._src)
        img = self.grid
        cover = check_label_grid(self.image_path, img, self.path, lab, self.on_image_grid)
        if cover is None:
            return
        self._vrt = WarpedVRT(self._src, crs=img.crs, transform=img.transform, width=img.width,
                              height=img.height, resampling=Resampling.nearest, add_alpha=True)
        log.warning(
            "%s: label grid (%dx%d px, %s) differs from the image grid of %s (%dx%d px): labels "
            "warped onto the image grid with nearest neighbour; they cover %.0f%% of the image",
            self.path.name, lab.width, lab.height, crs_name(lab.crs), self.image_path.name,
            img.width, img.height, 100 * cover)

    @property
    def warped(self) -> bool:
        return self._vrt is not None

    # --- reading -----------------------------------------------------------------------------
    def read_codes(self, window: Any) -> np.ndarray:
        """Codes (int64, (h, w)) for a window of the image grid."""
        if self._vrt is not None:
            data = read_window(self._vrt, self.path, indexes=self.bands, window=window)
            valid = read_window(self._vrt, self.path, indexes=self._vrt.count, window=window) > 0
        else:
            data = read_window(self._src, self.path, indexes=self.bands, window=window)
            valid = valid_mask(self._src, self.path, data, self.bands, window)
        if self.kind == "colors" and len(self.bands) == 3:
            codes = ((data[0].astype(np.int64) << 16) | (data[1].astype(np.int64) << 8)
                     | data[2].astype(np.int64))
        elif self._lut is not None:
            codes = self._lut[data[0]]
        else:
            codes = data[0].astype(np.int64)
        if valid is not None:
            codes[~valid] = NODATA_CODE
        return codes

    def describe(self, code: int) -> str:
        return describe_code(self.kind, code)

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
            self._vrt = None
        if self._src is not None:
            self._src.close()
            self._src = None


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no colour table
        return None
