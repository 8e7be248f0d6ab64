"""The input image as the model sees it: its bands and value scale checked against the model, its
ground resolution, and padded normalized tiles with their validity masks (opened and read through
:mod:`satsynth.raster`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError
from satsynth.raster import metres_per_unit, quiet_georef_warnings, read_window, valid_mask

log = logging.getLogger("satsynth")


#: Side of the decimated read that compares an image's values with the model's training values.
VALUE_SAMPLE_SIDE = 256
#: Largest ratio between an image's and the training images' value spreads taken as one scale.
VALUE_SCALE_RATIO = 8.0
#: Warn when the image's pixel size differs from the model's by more than this fraction.
RESOLUTION_TOLERANCE = 0.25
_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def check_values(src: Any, indexes: list[int], normalizer: Normalizer, path: Path) -> None:
    """Refuse an image of another data type whose values are on another scale than the model's
    training images (12-bit counts, reflectances 0..1 for a model trained on 0..255): the model's
    normalization would squash them to one end and predict one class everywhere. A different
    type holding values of the training scale (a uint8 image stored as uint16) is used as is."""
    if src.dtypes[0] == normalizer.dtype:
        return
    h, w = min(src.height, VALUE_SAMPLE_SIDE), min(src.width, VALUE_SAMPLE_SIDE)
    with quiet_georef_warnings():
        data = src.read(indexes, out_shape=(len(indexes), h, w), masked=True)
    dt = np.dtype(normalizer.dtype)
    for b in range(len(indexes)):
        vals = data[b].compressed().astype(np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        p2, p98 = (float(v) for v in np.percentile(vals, [2, 98]))
        lo, hi = normalizer.low[b], normalizer.high[b]
        ratio = max(p98 - p2, 1e-9) / max(hi - lo, 1e-9)
        outside = np.issubdtype(dt, np.integer) and (p98 > np.iinfo(dt).max
                                                     or p2 < np.iinfo(dt).min)
        if outside or not 1 / VALUE_SCALE_RATIO <= ratio <= VALUE_SCALE_RATIO:
            raise SatSynthError(
                f"{src.dtypes[0]} values {p2:.6g}..{p98:.6g} (band {b + 1}) are on another scale "
                f"than the model's {normalizer.dtype} training images ({lo:.6g}..{hi:.6g}): it "
                "would predict one class; convert the image as the training images were made "
                f"(e.g. gdal_translate -ot {_GDAL_TYPES.get(normalizer.dtype, normalizer.dtype)} "
                f"-scale {p2:.6g} {p98:.6g} {lo:.6g} {hi:.6g}) or train on images like it", path)
    log.info("%s is %s, the model was trained on %s images; the values are on the training "
             "scale, used as they are", path.name, src.dtypes[0], normalizer.dtype)


def select_bands(src: Any, needed: int, path: Path) -> list[int]:
    """Band indexes to feed the model: all bands, or all but a trailing alpha band."""
    from rasterio.enums import ColorInterp

    bands = list(range(1, src.count + 1))
    if src.count == needed + 1 and src.colorinterp[-1] == ColorInterp.alpha:
        bands = bands[:-1]
    if len(bands) != needed:
        raise SatSynthError(
            f"the image has {src.count} band{'s' if src.count != 1 else ''}, but the model was "
            f"trained on {needed}-band images; use an image with the same bands as the training "
            f"data", path)
    return bands


def _centre_lonlat(crs: Any, transform: Any, width: int, height: int) -> tuple[float, float]:
    from rasterio.warp import transform as warp_xy

    x, y = transform @ (width / 2, height / 2)
    if crs.is_geographic:
        return x, y
    lon, lat = warp_xy(crs, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


def ground_resolution(crs: Any, transform: Any, width: int, height: int
                      ) -> tuple[float, float] | None:
    """Pixel size in metres (x, y) at the raster's centre; ``None`` without a CRS."""
    if crs is None:
        return None
    if crs.is_geographic:
        import pyproj

        geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
        cx, cy = transform @ (width / 2, height / 2)
        x1, y1 = transform @ (width / 2 + 1, height / 2)
        x2, y2 = transform @ (width / 2, height / 2 + 1)
        return (abs(geod.inv(cx, cy, x1, y1)[2]), abs(geod.inv(cx, cy, x2, y2)[2]))
    factor = metres_per_unit(crs)
    return (math.hypot(transform.a, transform.d) * factor,
            math.hypot(transform.b, transform.e) * factor)


def model_resolution(model_crs: str | None, pixel_size: list[float] | None, image_crs: Any,
                     image_transform: Any, width: int, height: int) -> tuple[float, float] | None:
    """The model's training pixel size in metres, or ``None`` when it was trained without a CRS.

    A model trained in degrees is converted at the image's latitude."""
    if not model_crs or not pixel_size:
        return None
    from rasterio.crs import CRS

    try:
        crs = CRS.from_user_input(model_crs)
    except Exception:  # noqa: BLE001 - an unreadable stored CRS means: unknown
        return None
    px, py = abs(float(pixel_size[0])), abs(float(pixel_size[-1]))
    if not crs.is_geographic:
        f = metres_per_unit(crs)
        return px * f, py * f
    if image_crs is None:
        return None
    _, lat = _centre_lonlat(image_crs, image_transform, width, height)
    return (px * 111320.0 * math.cos(math.radians(lat)), py * 110574.0)


def resolution_scale(src: Any, cfg: Any, image: Path, match: bool,
                     tolerance: float = RESOLUTION_TOLERANCE) -> tuple[float, float] | None:
    """Compare the image's pixel size with the model's training pixel size.

    Args:
        src: the open image.
        cfg: the segmenter's config (its ``crs`` and ``pixel_size``).
        image: the image's path, named in messages.
        match: ``--match-resolution``: resample the image to the model's pixel size.
        tolerance: warn when the sizes differ by more than this fraction (without ``match``).

    Returns:
        With ``match``, the ``(x, y)`` factor to resample by (None when they agree within 1%);
        else None, after a warning when they are far apart.
    """
    with quiet_georef_warnings():
        img = ground_resolution(src.crs, src.transform, src.width, src.height)
    mod = model_resolution(cfg.crs, cfg.pixel_size, src.crs, src.transform, src.width,
                           src.height) if img else None
    if img is None or mod is None:
        why = ("the image has no CRS" if img is None else
               "the model does not record its training pixel size and CRS")
        if match:
            raise SatSynthError(f"--match-resolution needs both ground resolutions, but {why}",
                                image)
        log.debug("resolution check skipped: %s", why)
        return None
    diff = max(abs(img[0] / mod[0] - 1.0), abs(img[1] / mod[1] - 1.0))
    desc = (f"the image's pixels are {img[0]:.3g} x {img[1]:.3g} m, the model was trained on "
            f"{mod[0]:.3g} x {mod[1]:.3g} m")
    if match:
        if diff <= 0.01:
            log.info("%s: no resampling needed", desc)
            return None
        log.info("%s: resampling on the fly", desc)
        return mod[0] / img[0], mod[1] / img[1]
    if diff > tolerance:
        log.warning("%s (%.0f%% apart): predictions may be poor; --match-resolution resamples "
                    "the image to the model's resolution on the fly", desc, 100 * diff)
    return None


def matched_vrt(src: Any, scale_x: float, scale_y: float) -> Any:
    """A WarpedVRT of ``src`` on the same CRS and bounds with pixels ``scale`` times larger."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    width = max(1, round(src.width / scale_x))
    height = max(1, round(src.height / scale_y))
    transform = src.transform @ Affine.scale(src.width / width, src.height / height)
    coarser = scale_x * scale_y > 1.0
    return WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height,
                     resampling=Resampling.average if coarser else Resampling.bilinear)


class TileReader:
    """Reads tiles of a dataset (a file or a WarpedVRT) as normalized float32 arrays, padded by
    reflection where they pass the raster's edge, with a validity mask (False = nodata by
    :func:`satsynth.raster.valid_mask`, or padding).

    Offsets are in the dataset's pixels."""

    def __init__(self, ds: Any, indexes: list[int], normalizer: Normalizer, path: Path) -> None:
        self.ds = ds
        self.indexes = indexes
        self.normalizer = normalizer
        self.path = path

    def on(self, ds: Any) -> TileReader:
        """A reader of another dataset of the same bands (the image resampled: a WarpedVRT)."""
        return TileReader(ds, self.indexes, self.normalizer, self.path)

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(data (C, height, width) float32 in [-1, 1], valid (height, width) bool)``."""
        from rasterio.windows import Window

        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.ds.height), min(col + width, self.ds.width)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        raw = read_window(self.ds, self.path, indexes=self.indexes, window=win)
        valid = valid_mask(self.ds, self.path, raw, self.indexes, win)
        if valid is None:
            valid = np.ones(raw.shape[1:], dtype=bool)
        data = self.normalizer.to_model(raw)
        data[:, ~valid] = 0.0
        pads = ((r0 - row, row + height - r1), (c0 - col, col + width - c1))
        if any(p for pair in pads for p in pair):
            mode = ("reflect" if all(max(pair) < n for pair, n in zip(pads, data.shape[1:], strict=True))
                    else "edge")
            data = np.pad(data, ((0, 0), *pads), mode=mode)
            valid = np.pad(valid, pads, mode="constant", constant_values=False)
        return data, valid
