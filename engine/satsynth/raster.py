"""The raster layer every stage reads through: opening rasters with clear errors, their grid and
CRS name, windowed reads, which pixels hold data, chip footprints and tiling plans.

It sits below the stages (it knows no class table, model or chip store), so ``prepare``,
``train-generator``, ``predict`` and ``evaluate`` all see a raster the same way.

**Which pixels hold data** (:func:`valid_mask`): a pixel is valid only when *every* band used has
data there. A band has no data where it holds its nodata value (NaN included), where its GDAL
mask says so (a per-dataset mask, an alpha band, a per-band mask), or where a floating-point value
is not finite. One missing band is enough: the model would see a value that is not there
(``prepare`` never trains on such pixels, ``predict`` writes nodata there and ``evaluate`` does
not count them).
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError


# --- opening and reading -------------------------------------------------------------------------
@contextmanager
def quiet_georef_warnings() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning for the block.

    Pixel-space inputs (a plain JPEG or PNG) are supported on purpose.

    Returns:
        `Iterator[None]`: a context manager.
    """
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def quiet_libtiff() -> None:
    """Stop libtiff printing its errors straight to stderr.

    A full disk prints ``_tiffWriteProc: No space left on device`` once per block; GDAL receives the
    errors too and rasterio raises them, so the engine reports each error once. No-op where
    rasterio's libtiff cannot be found.
    """
    import ctypes

    import rasterio  # noqa: F401 - loads GDAL and its libtiff

    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            libs = {ln.split()[-1] for ln in f if "libtiff" in ln and ".so" in ln}
        for lib in libs:
            handler = ctypes.CDLL(lib).TIFFSetErrorHandler
            handler.argtypes, handler.restype = [ctypes.c_void_p], ctypes.c_void_p
            handler(None)
    except (OSError, AttributeError):
        pass


def open_raster(path: str | Path, what: str = "raster") -> Any:
    """Open a GDAL raster for reading, or raise a :class:`SatSynthError` naming the file.

    Args:
        path (`str` or `Path`):
            Any raster GDAL opens (GeoTIFF, VRT, JPEG2000, PNG, ...).
        what (`str`, *optional*, defaults to `"raster"`):
            What the file is, for the messages (e.g. `"image"`, `"labels"`).

    Returns:
        `rasterio.DatasetReader`: the open dataset (the caller closes it).

    Raises:
        `SatSynthError`: the file is missing, is a folder, cannot be opened or has no bands.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise SatSynthError(f"{what} file not found", path)
    if path.is_dir():
        raise SatSynthError(f"{what} is a folder, expected a raster file", path)
    try:
        with quiet_georef_warnings():
            src = rasterio.open(path)
    except (RasterioIOError, OSError) as exc:
        raise SatSynthError(f"cannot read {what}: not a raster GDAL can open, or damaged ({exc})",
                            path) from None
    if src.count < 1:
        src.close()
        raise SatSynthError(f"{what} has no bands", path)
    return src


def _unreadable(exc: Exception, path: str | Path, window: Any) -> SatSynthError:
    at = "" if window is None else f" at row {int(window.row_off)}, column {int(window.col_off)}"
    return SatSynthError(f"cannot read pixels{at}: the file is damaged or truncated ({exc})", path)


def read_window(src: Any, path: str | Path, **kwargs: Any) -> np.ndarray:
    """``src.read(**kwargs)`` that turns GDAL read failures (damaged files) into clear errors.

    Args:
        src (`rasterio.DatasetReader`):
            The open raster.
        path (`str` or `Path`):
            Its path, for the message.
        **kwargs:
            What ``src.read`` takes (``indexes``, ``window``, ``out_dtype``, ...).

    Returns:
        `np.ndarray`: the pixels, as ``src.read`` returns them.

    Raises:
        `SatSynthError`: the pixels cannot be read (naming the file, and the window's row and
        column).
    """
    from rasterio.errors import RasterioError

    try:
        with quiet_georef_warnings():
            return src.read(**kwargs)
    except (RasterioError, OSError) as exc:
        raise _unreadable(exc, path, kwargs.get("window")) from None


def read_masks(src: Any, path: str | Path, band: int, window: Any) -> np.ndarray:
    """GDAL's mask of one band (0 = nodata), with the same error handling as :func:`read_window`.

    Args:
        src (`rasterio.DatasetReader`):
            The open raster.
        path (`str` or `Path`):
            Its path, for the message.
        band (`int`):
            The band, 1-based.
        window (`rasterio.windows.Window` or `None`):
            The window to read; `None` for the whole raster.

    Returns:
        `np.ndarray`: uint8, 0 where the band has no data, 255 where it has.

    Raises:
        `SatSynthError`: the mask cannot be read.
    """
    from rasterio.errors import RasterioError

    try:
        with quiet_georef_warnings():
            return src.read_masks(band, window=window)
    except (RasterioError, OSError) as exc:
        raise _unreadable(exc, path, window) from None


def band_has_mask(src: Any, band: int) -> bool:
    """Whether GDAL reports nodata, an alpha band or a mask for a band.

    Args:
        src (`rasterio.DatasetReader`):
            The open raster.
        band (`int`):
            The band, 1-based.

    Returns:
        `bool`: `True` when some of the band's pixels may be without data.
    """
    from rasterio.enums import MaskFlags

    return MaskFlags.all_valid not in src.mask_flag_enums[band - 1]


# --- which pixels hold data ----------------------------------------------------------------------
def valid_mask(src: Any, path: str | Path, data: np.ndarray, indexes: Sequence[int],
               window: Any) -> np.ndarray | None:
    """The pixels of ``window`` with data in every band of ``indexes``.

    The one rule for which pixels hold data (prepare, predict and evaluate all use it): a pixel is
    invalid when any band lacks data there: its nodata value, its mask or alpha band, or a float
    value that is NaN or infinite.

    Args:
        src (`rasterio.DatasetReader`):
            The open raster.
        path (`str` or `Path`):
            Its path, for the messages.
        data (`np.ndarray`):
            ``(len(indexes), rows, cols)``: the bands ``indexes`` as read from ``window``, in that
            order.
        indexes (`Sequence[int]`):
            The bands, 1-based.
        window (`rasterio.windows.Window` or `None`):
            The window ``data`` was read from.

    Returns:
        `np.ndarray` or `None`: ``(rows, cols)`` bool, `True` where every band has data; `None`
        when the raster declares no nodata or mask and holds no NaN there (every pixel valid).
    """
    from rasterio.enums import MaskFlags

    floating = np.issubdtype(data.dtype, np.floating)
    valid = None
    shared_mask_read = False
    for i, b in enumerate(indexes):
        nd = src.nodatavals[b - 1]
        m = None
        if nd is not None:
            m = ~np.isnan(data[i]) if math.isnan(nd) else data[i] != nd
        elif band_has_mask(src, b):
            flags = src.mask_flag_enums[b - 1]
            shared = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
            if not (shared and shared_mask_read):  # one mask for all bands: read it once
                m = read_masks(src, path, b, window) > 0
                shared_mask_read = shared_mask_read or shared
        if floating:
            f = np.isfinite(data[i])
            m = f if m is None else m & f
        if m is not None:
            valid = m if valid is None else valid & m
    return valid


# --- georeference ------------------------------------------------------------------------------
@dataclass
class Grid:
    """The pixel grid of a raster: size, transform and CRS (``None`` when not georeferenced)."""

    width: int
    height: int
    transform: Any  # affine.Affine
    crs: Any  # rasterio.crs.CRS | None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units (pixel units when not georeferenced)."""
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return (min(west, east), min(south, north), max(west, east), max(south, north))

    def same_as(self, other: Grid) -> bool:
        """True when both grids put every pixel at the same place."""
        if self.shape != other.shape or (self.crs is None) != (other.crs is None):
            return False
        if self.crs is not None and self.crs != other.crs:
            return False
        return bool(self.transform.almost_equals(other.transform, precision=1e-9 * max(
            1.0, abs(self.transform.a), abs(self.transform.e))))


def grid_of(src: Any) -> Grid:
    """The grid of an open rasterio dataset; non-georeferenced rasters get the pixel grid.

    Args:
        src (`rasterio.DatasetReader`):
            The open raster.

    Returns:
        `Grid`: its size, transform and CRS (`None`, with the identity transform, when it has no
        georeference).
    """
    from affine import Affine

    if src.crs is None:
        return Grid(src.width, src.height, Affine.identity(), None)
    return Grid(src.width, src.height, src.transform, src.crs)


def crs_name(crs: Any) -> str:
    """A short human name for a CRS.

    Args:
        crs (`rasterio.crs.CRS`, `str` or `None`):
            The CRS (anything ``pyproj.CRS.from_user_input`` takes).

    Returns:
        `str`: e.g. ``EPSG:32640 (WGS 84 / UTM zone 40N)``, ``custom CRS 'NAME' (no EPSG code)``
        where it has none, or ``not georeferenced`` for `None`; never a WKT dump.
    """
    if crs is None:
        return "not georeferenced"
    try:
        import pyproj

        pc = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        auth = pc.to_authority(min_confidence=95)
        if auth:
            return f"{auth[0]}:{auth[1]} ({pc.name})"
        if pc.name and pc.name.lower() not in ("unknown", "unnamed"):
            return f"custom CRS '{pc.name}' (no EPSG code)"
        op = pc.coordinate_operation
        what = ", ".join(n for n in (op.method_name if op else None,
                                     pc.datum.name if pc.datum else None) if n)
        return f"custom CRS ({what or 'unnamed'}; no EPSG code)"
    except Exception:  # noqa: BLE001 - naming is best effort; never dump WKT or PROJJSON
        return "custom CRS (no EPSG code)"


def metres_per_unit(crs: Any) -> float:
    """Metres per unit of a non-geographic CRS's axes.

    Args:
        crs (`rasterio.crs.CRS`):
            A projected (or local) CRS.

    Returns:
        `float`: e.g. 0.3048... for US survey feet; 1.0 where the CRS does not declare its linear
        units (e.g. a local engineering CRS): those are taken as metres.
    """
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - rasterio raises CRSError for undeclared units
        return 1.0


def crs_to_string(crs: Any) -> str | None:
    """How a CRS is stored in SatSynth's metadata (``dataset.json``, ``config.json``).

    Args:
        crs (`rasterio.crs.CRS`, `str` or `None`):
            The CRS.

    Returns:
        `str` or `None`: ``EPSG:n`` when that code is exact, otherwise the WKT; `None` for `None`.
    """
    if crs is None:
        return None
    return crs.to_string()


def fmt_coord(v: float) -> str:
    """A coordinate with enough digits to read.

    Args:
        v (`float`):
            The coordinate.

    Returns:
        `str`: e.g. ``2600090.25`` (not ``2.60009e+06``) or ``55.274183``.
    """
    text = f"{v:.{2 if abs(v) >= 1000 else 6}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_bounds(b: tuple[float, ...]) -> str:
    """Bounds for a message.

    Args:
        b (`tuple[float, ...]`):
            ``(left, bottom, right, top)``.

    Returns:
        `str`: ``x LEFT..RIGHT, y BOTTOM..TOP``.
    """
    return f"x {fmt_coord(b[0])}..{fmt_coord(b[2])}, y {fmt_coord(b[1])}..{fmt_coord(b[3])}"


# --- chip footprints ---------------------------------------------------------------------------
def footprint_boxes(transforms: np.ndarray, size: int) -> np.ndarray:
    """The bounding boxes of square chips from their affine transforms.

    Args:
        transforms (`np.ndarray`):
            ``(N, 6)``: each chip's affine coefficients a, b, c, d, e, f (any rotation or flip).
        size (`int`):
            The chips' side in pixels.

    Returns:
        `np.ndarray`: ``(N, 4)`` xmin, ymin, xmax, ymax.
    """
    t = np.asarray(transforms, dtype=np.float64).reshape(-1, 6)
    a, b, c, d, e, f = (t[:, i] for i in range(6))
    xs = np.stack([c, c + a * size, c + b * size, c + a * size + b * size], axis=1)
    ys = np.stack([f, f + d * size, f + e * size, f + d * size + e * size], axis=1)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


# --- tiling plans ------------------------------------------------------------------------------
def window_starts(length: int, size: int, stride: int, spread: bool = False) -> list[int]:
    """Start offsets of ``size`` px windows covering ``[0, length)``, the last one ending at
    ``length``; none when ``length < size``.

    Chips (``spread=False``) start every ``stride`` px, plus one last window flush with the edge,
    so the chips of a raster sit on one lattice. Prediction tiles (``spread=True``) are spread
    evenly, neighbours at most ``stride`` apart, so every overlap is about the same for blending.
    """
    if length < size:
        return []
    if stride <= 0:
        raise ValueError(f"stride {stride} must be positive")
    if not spread:
        starts = list(range(0, length - size + 1, stride))
        if starts[-1] + size < length:
            starts.append(length - size)
        return starts
    if length == size:
        return [0]
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def _group_offsets(offsets: Sequence[int], size: int, max_span: int) -> list[tuple[int, int]]:
    """Split sorted offsets into runs ``[a, b)`` whose window (first .. last + size) fits
    ``max_span``."""
    groups = []
    a = 0
    n = len(offsets)
    while a < n:
        b = a + 1
        while b < n and offsets[b] + size - offsets[a] <= max_span:
            b += 1
        groups.append((a, b))
        a = b
    return groups


@dataclass
class Tile:
    """A window of the raster holding whole chips (a chip-reading tile of :func:`plan_tiles`).

    ``row_offsets``/``col_offsets`` are the chips' offsets in the raster; the *counted* region
    ``[count_r0, count_r1) x [count_c0, count_c1)`` (raster coordinates) is the part of the
    window that no later tile counts, so counting pixels there over all tiles counts every
    raster pixel exactly once.
    """

    row_off: int
    col_off: int
    height: int
    width: int
    row_offsets: np.ndarray
    col_offsets: np.ndarray
    count_r0: int
    count_r1: int
    count_c0: int
    count_c1: int

    @property
    def window(self) -> Any:
        """The tile as a rasterio ``Window``."""
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def n_chips(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)


def plan_tiles(height: int, width: int, size: int, stride: int, max_span: int) -> list[Tile]:
    """Chips of ``size`` px every ``stride`` px of a raster, grouped into reading tiles.

    The last chip of each row and column lies flush with the raster's edge, so every pixel is
    covered.

    Args:
        height (`int`):
            The raster's rows.
        width (`int`):
            The raster's columns.
        size (`int`):
            The chip side in pixels.
        stride (`int`):
            The step between chips in pixels.
        max_span (`int`):
            The largest side of a reading tile in pixels (at least one chip).

    Returns:
        `list[Tile]`: the tiles in row-major order, each with its chips' offsets and the region it
        alone counts.
    """
    rows = np.asarray(window_starts(height, size, stride), dtype=np.int64)
    cols = np.asarray(window_starts(width, size, stride), dtype=np.int64)
    max_span = max(int(max_span), size)
    rgroups, cgroups = _group_offsets(rows, size, max_span), _group_offsets(cols, size, max_span)
    tiles = []
    for ri, (ra, rb) in enumerate(rgroups):
        r0 = int(rows[ra])
        r1 = int(rows[rgroups[ri + 1][0]]) if ri + 1 < len(rgroups) else height
        for ci, (ca, cb) in enumerate(cgroups):
            c0 = int(cols[ca])
            c1 = int(cols[cgroups[ci + 1][0]]) if ci + 1 < len(cgroups) else width
            tiles.append(Tile(r0, c0, int(rows[rb - 1]) + size - r0, int(cols[cb - 1]) + size - c0,
                              rows[ra:rb], cols[ca:cb], r0, r1, c0, c1))
    return tiles


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


@dataclass
class _Axis:
    """Tiles and cell segments along one axis."""

    length: int
    tile: int
    starts: list[int]
    breaks: list[int] = field(init=False)  # segment boundaries, 0 .. length
    last: list[int] = field(init=False)  # per segment: index of the last tile covering it
    segments_of: list[list[int]] = field(init=False)  # per tile: the segments it covers

    def __post_init__(self) -> None:
        cuts = {0, self.length}
        for s in self.starts:
            cuts.add(min(s, self.length))
            cuts.add(min(s + self.tile, self.length))
        self.breaks = sorted(cuts)
        n_seg = len(self.breaks) - 1
        # the tile with the largest start <= segment start covers the whole segment
        self.last = [bisect_right(self.starts, self.breaks[i]) - 1 for i in range(n_seg)]
        self.segments_of = [[] for _ in self.starts]
        for i in range(n_seg):
            for t, s in enumerate(self.starts):
                if s <= self.breaks[i] and self.breaks[i + 1] <= s + self.tile:
                    self.segments_of[t].append(i)

    def segment(self, i: int) -> tuple[int, int]:
        return self.breaks[i], self.breaks[i + 1]

    def final_span(self, t: int) -> tuple[int, int]:
        """Pixels that are final once tile ``t`` (and all before it) is done."""
        lo = self.starts[t]
        hi = self.starts[t + 1] if t + 1 < len(self.starts) else self.length
        return lo, hi


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Prediction tiles along one axis: spread evenly with at least ``overlap`` px shared; one
    tile (padded) when ``length <= tile``."""
    if length <= tile:
        return [0]
    if tile - overlap <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    return window_starts(length, tile, tile - overlap, spread=True)


@dataclass
class TileGrid:
    """Prediction tiles over a ``height x width`` region and the cells they cut it into.

    Tiles of ``tile_h x tile_w`` px share at least ``overlap`` px with their neighbours. Their
    edges cut the region into *cells*, rectangles covered by the same set of tiles. Tiles are
    processed in row-major order, so a cell is final right after the last tile that covers it
    (the bottom-right one): blending only keeps the cells still open, a band about ``overlap``
    rows tall across the width plus one tile."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int

    def __post_init__(self) -> None:
        self.rows = _Axis(self.height, self.tile_h,
                          _tile_starts(self.height, self.tile_h, self.overlap))
        self.cols = _Axis(self.width, self.tile_w,
                          _tile_starts(self.width, self.tile_w, self.overlap))

    @classmethod
    def for_region(cls, height: int, width: int, tile: int, overlap: int,
                   multiple: int = 1) -> TileGrid:
        """Tiles of ``tile`` pixels, shrunk (to a multiple of ``multiple``) for small regions."""
        th = min(tile, round_up(height, multiple))
        tw = min(tile, round_up(width, multiple))
        return cls(height, width, th, tw, overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Tile rows x tile columns."""
        return len(self.rows.starts), len(self.cols.starts)

    def __len__(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        """``(k, j, y, x)`` for every tile in processing (row-major) order."""
        for k, y in enumerate(self.rows.starts):
            for j, x in enumerate(self.cols.starts):
                yield k, j, y, x

    def cells_of(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        """Cells ``(r, c)`` covered by tile ``(k, j)``."""
        for r in self.rows.segments_of[k]:
            for c in self.cols.segments_of[j]:
                yield r, c

    def cells_final_after(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        """Cells whose last covering tile is ``(k, j)``."""
        for r in self.rows.segments_of[k]:
            if self.rows.last[r] != k:
                continue
            for c in self.cols.segments_of[j]:
                if self.cols.last[c] == j:
                    yield r, c

    def cell_window(self, r: int, c: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of cell ``(r, c)`` in region pixels."""
        return (*self.rows.segment(r), *self.cols.segment(c))
