"""Writing the class raster (and confidence raster) row band by row band.

Rows arrive in order, in bands of any height; they are copied into one block row buffer (the
GeoTIFF block height across the width) that is written when full, so no compressed block is ever
rewritten and memory stays at one block row across the width (plus the band being added).
Styling: a colour table, the band description, class names as band metadata, a GDAL raster
attribute table and category names in a ``.aux.xml`` sidecar, and a QGIS ``.qml`` style (written
by the caller with ``write_qml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from satsynth.contract import OUTPUT_MARK
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.errors import SatSynthError, system_error
from satsynth.raster import quiet_georef_warnings

CONFIDENCE_NODATA = 0
BLOCK = 512


def block_size(n: int) -> int:
    """GeoTIFF block edge for a raster dimension: 512, or less (a multiple of 16) when small."""
    return min(BLOCK, max(16, -(-n // 16) * 16))


def gtiff_profile(width: int, height: int, crs: Any, transform: Any, nodata: int
                  ) -> dict[str, Any]:
    """Creation options of a tiled, compressed single-band uint8 GeoTIFF."""
    return {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
            "crs": crs, "transform": transform, "nodata": nodata, "tiled": True,
            "blockxsize": block_size(width), "blockysize": block_size(height),
            "compress": "deflate", "predictor": 2, "bigtiff": "if_safer"}


class PredictionWriter:
    """Streams class ids (and optionally confidences) of one grid into GeoTIFFs.

    ``add(row, ids, conf)`` takes consecutive full-width row bands. Pixels outside ``aoi`` become
    nodata. Each written block row is also handed to ``vectorizer.add_block``."""

    def __init__(self, class_path: Path, *, width: int, height: int, crs: Any, transform: Any,
                 table: ClassTable | None = None, confidence_path: Path | None = None,
                 aoi: Any = None, vectorizer: Any = None) -> None:
        import rasterio

        self.width, self.height = width, height
        self.transform = transform
        self.aoi = aoi
        self.vectorizer = vectorizer
        self._block = block_size(height)
        self._ids: np.ndarray | None = None  # the block row being filled (made on first use)
        self._confs: np.ndarray | None = None
        self._next_row = 0  # first row not yet received
        self._written = 0  # first row not yet written (the block row's first)
        self._dsets: list[Any] = []
        try:
            with quiet_georef_warnings():
                self._cls = rasterio.open(class_path, "w", **gtiff_profile(
                    width, height, crs, transform, IGNORE_INDEX))
                self._dsets.append(self._cls)
                self._conf = None
                if confidence_path is not None:
                    self._conf = rasterio.open(confidence_path, "w", **gtiff_profile(
                        width, height, crs, transform, CONFIDENCE_NODATA))
                    self._dsets.append(self._conf)
        except Exception as exc:  # noqa: BLE001 - GDAL reports unwritable paths many ways
            self.close()
            full = system_error(exc, [str(class_path)])  # a full disk, a read-only folder
            raise (SatSynthError(full) if full else SatSynthError(
                f"cannot create the output raster ({exc})", class_path)) from None
        self._cls.update_tags(**{OUTPUT_MARK: "prediction"})
        if table is not None:
            style_class_band(self._cls, table)
        if self._conf is not None:
            self._conf.update_tags(**{OUTPUT_MARK: "confidence"})
            self._conf.set_band_description(1, "confidence (top class probability x 255)")
            self._conf.update_tags(1, SCALE="0.00392156862745098", meaning="probability of the "
                                   "predicted class; 0 = nodata")

    def add(self, row: int, ids: np.ndarray, conf: np.ndarray | None = None) -> None:
        """Receive rows ``row .. row + len(ids)`` (full width, uint8); ``conf`` None writes
        confidence nodata for them."""
        if row != self._next_row:
            raise ValueError(f"rows must arrive in order: expected {self._next_row}, got {row}")
        if ids.shape[1] != self.width:
            raise ValueError("row bands must span the full width")
        done = 0
        while done < len(ids):
            at = self._next_row - self._written
            if self._ids is None:
                self._ids = np.empty((self._block, self.width), dtype=np.uint8)
                if self._conf is not None:
                    self._confs = np.empty((self._block, self.width), dtype=np.uint8)
            n = min(len(ids) - done, self._block - at)
            self._ids[at:at + n] = ids[done:done + n]
            if self._confs is not None:
                self._confs[at:at + n] = conf[done:done + n] if conf is not None else 0
            done += n
            self._next_row += n
            if at + n == self._block or self._next_row >= self.height:
                self._flush(at + n)

    def _flush(self, n: int) -> None:
        """Write the ``n`` rows of the block row buffer (a whole block row, or the last rows)."""
        from rasterio.transform import Affine
        from rasterio.windows import Window

        assert self._ids is not None
        out_ids = self._ids[:n]
        out_conf = self._confs[:n] if self._confs is not None else None
        if self.aoi is not None:
            t = self.transform @ Affine.translation(0, self._written)
            outside = ~self.aoi.inside(t, n, self.width)
            out_ids[outside] = IGNORE_INDEX
            if out_conf is not None:
                out_conf[outside] = CONFIDENCE_NODATA
        win = Window(0, self._written, self.width, n)
        self._cls.write(out_ids, 1, window=win)
        if self._conf is not None and out_conf is not None:
            self._conf.write(out_conf, 1, window=win)
        self._written += n
        if self.vectorizer is not None:
            self.vectorizer.add_block(self._written - n, out_ids,
                                      last=self._written >= self.height)
        if self._written >= self.height:
            self._ids = self._confs = None

    @property
    def wants_confidence(self) -> bool:
        """Whether a confidence raster is being written."""
        return self._conf is not None

    def close(self) -> None:
        """Close the datasets (all rows must have been added for a complete raster)."""
        for ds in self._dsets:
            ds.close()
        self._dsets = []

    @property
    def complete(self) -> bool:
        return self._written >= self.height


def style_class_band(ds: Any, table: ClassTable) -> None:
    """Colour table, band description and class names on band 1 of an open writable dataset."""
    ds.write_colormap(1, table.colormap())
    ds.set_band_description(1, "class")
    ds.update_tags(1, **{f"CLASS_{c.id}": c.name for c in table.classes})
    ds.update_tags(CLASSES=json.dumps([{"id": c.id, "name": c.name, "color": c.hex()}
                                       for c in table.classes]))


def aux_xml(table: ClassTable) -> str:
    """GDAL PAM sidecar text: category names and a thematic raster attribute table for band 1
    (what GDAL itself writes for a GeoTIFF; QGIS and ArcGIS read it)."""
    names = [""] * 256
    for c in table.classes:
        names[c.id] = c.name
    last = max(c.id for c in table.classes)
    cats = "\n".join(f"      <Category>{escape(n)}</Category>" for n in names[:last + 1])
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    defs = "\n".join(
        f'      <FieldDefn index="{i}">\n        <Name>{n}</Name>\n        <Type>{t}</Type>\n'
        f"        <Usage>{u}</Usage>\n      </FieldDefn>" for i, (n, t, u) in enumerate(fields))
    rows = "\n".join(
        f'      <Row index="{i}">\n        <F>{c.id}</F>\n        <F>{escape(c.name)}</F>\n'
        f"        <F>{c.color[0]}</F>\n        <F>{c.color[1]}</F>\n        <F>{c.color[2]}</F>\n"
        f"      </Row>" for i, c in enumerate(sorted(table.classes, key=lambda c: c.id)))
    return f"""<PAMDataset>
  <PAMRasterBand band="1">
    <Description>class</Description>
    <CategoryNames>
{cats}
    </CategoryNames>
    <GDALRasterAttributeTable tableType="thematic">
{defs}
{rows}
    </GDALRasterAttributeTable>
  </PAMRasterBand>
</PAMDataset>
"""


def to_cog(src: Path, dst: Path, overview_resampling: str) -> None:
    """Copy a tiled GeoTIFF into a Cloud Optimized GeoTIFF with overviews."""
    from rasterio.shutil import copy

    copy(str(src), str(dst), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=512,
         OVERVIEW_RESAMPLING=overview_resampling, BIGTIFF="IF_SAFER")
