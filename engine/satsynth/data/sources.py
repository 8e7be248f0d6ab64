"""Input rasters: opening them with clear errors, describing their grid, finding image/mask pairs.

A *pair* is one image raster plus its labels, which are one of:

- ``raster``: a single-band raster of class ids (``--labels``);
- ``colors``: a colour-coded mask, RGB or paletted (``--folder``, or a 3-band ``--labels``);
- ``vector``: a vector layer with a class field, rasterized onto the image grid (``--vector``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

#: File name endings taken as images / masks when scanning a folder.
IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".vrt", ".img", ".bmp",
                  ".gpkg", ".webp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp", ".webp")
#: Folder names recognised as holding the masks next to an ``images`` folder.
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "annotations", "gt")

LABEL_KINDS = ("raster", "colors", "vector")


@dataclass
class PairSpec:
    """One image and its labels, before anything is read."""

    image: Path
    labels: Path
    kind: str  # one of LABEL_KINDS; "auto" for folder masks (decided when opened)
    layer: str | None = None
    split: str | None = None  # a published dataset's own split ("train"/"val"), see layouts

    def describe(self) -> str:
        return f"{self.image.name} + {self.labels.name}"


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
    """The grid of an open rasterio dataset; non-georeferenced rasters get the pixel grid."""
    from affine import Affine

    if src.crs is None:
        return Grid(src.width, src.height, Affine.identity(), None)
    return Grid(src.width, src.height, src.transform, src.crs)


def crs_name(crs: Any) -> str:
    """A short human name for a CRS: 'EPSG:32640 (WGS 84 / UTM zone 40N)' or 'not georeferenced'."""
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


def fmt_coord(v: float) -> str:
    """A coordinate with enough digits to read: 2600090.25 (not 2.60009e+06), 55.274183."""
    text = f"{v:.{2 if abs(v) >= 1000 else 6}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_bounds(b: tuple[float, ...]) -> str:
    """(left, bottom, right, top) as 'x LEFT..RIGHT, y BOTTOM..TOP'."""
    return f"x {fmt_coord(b[0])}..{fmt_coord(b[2])}, y {fmt_coord(b[1])}..{fmt_coord(b[3])}"


def crs_to_string(crs: Any) -> str | None:
    """How a CRS is stored in our metadata: 'EPSG:n' when exact, otherwise WKT."""
    if crs is None:
        return None
    return crs.to_string()


@contextmanager
def quiet_georef_warnings() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: pixel-space inputs are supported on purpose."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def open_raster(path: str | Path, what: str = "raster") -> Any:
    """Open a GDAL raster for reading, or raise a :class:`SatSynthError` naming the file."""
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


def read_window(src: Any, path: str | Path, **kwargs: Any) -> np.ndarray:
    """``src.read(**kwargs)`` that turns GDAL read failures (damaged files) into clear errors."""
    from rasterio.errors import RasterioError

    try:
        with quiet_georef_warnings():
            return src.read(**kwargs)
    except (RasterioError, OSError) as exc:
        raise SatSynthError(f"cannot read pixels: the file is damaged or truncated ({exc})",
                            path) from None


def read_masks(src: Any, path: str | Path, band: int, window: Any) -> np.ndarray:
    """Validity mask (0 = nodata) of one band, with the same error handling as :func:`read_window`."""
    from rasterio.errors import RasterioError

    try:
        with quiet_georef_warnings():
            return src.read_masks(band, window=window)
    except (RasterioError, OSError) as exc:
        raise SatSynthError(f"cannot read pixels: the file is damaged or truncated ({exc})",
                            path) from None


def band_has_mask(src: Any, band: int) -> bool:
    """True when GDAL reports nodata, an alpha band or a mask for ``band`` (1-based)."""
    from rasterio.enums import MaskFlags

    return MaskFlags.all_valid not in src.mask_flag_enums[band - 1]


def find_folder_pairs(folder: str | Path) -> list[PairSpec]:
    """Pairs of ``images/<stem>.*`` and ``masks/<stem>.*`` found anywhere below ``folder``.

    Images without a mask (and masks without an image) are reported in the log and skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SatSynthError("folder not found", folder)
    image_dirs = sorted({Path(d) / n for d, subdirs, _ in os.walk(folder, followlinks=True)
                         for n in subdirs if n.lower() == "images"})
    if folder.name.lower() == "images":
        image_dirs.insert(0, folder)
    pairs: list[PairSpec] = []
    searched = []
    for idir in image_dirs:
        mdirs = [d for d in idir.parent.iterdir()
                 if d.is_dir() and d.name.lower() in MASK_DIR_NAMES]
        if not mdirs:
            continue
        searched.append(idir.parent)
        masks: dict[str, Path] = {}
        for mdir in mdirs:
            for m in sorted(mdir.iterdir()):
                if m.is_file() and m.suffix.lower() in MASK_SUFFIXES:
                    masks.setdefault(m.stem, m)
        used = set()
        for img in sorted(idir.iterdir()):
            if not (img.is_file() and img.suffix.lower() in IMAGE_SUFFIXES):
                continue
            m = masks.get(img.stem)
            if m is None:
                log.warning("%s: no mask with the same name in %s; skipped", img,
                            ", ".join(d.name for d in mdirs))
                continue
            used.add(img.stem)
            pairs.append(PairSpec(img, m, "auto"))
        for stem in sorted(set(masks) - used):
            log.warning("%s: mask without an image of the same name; skipped", masks[stem])
    if not pairs:
        raise SatSynthError(
            "no image/mask pairs found: expected an 'images' folder with a sibling 'masks' folder "
            "holding files of the same names (searched " + (
                ", ".join(str(s) for s in searched) if searched else "all sub-folders") + ")",
            folder)
    log.info("%s: found %d image/mask pairs in %d folder(s)", folder, len(pairs),
             len({p.image.parent for p in pairs}))
    return pairs
