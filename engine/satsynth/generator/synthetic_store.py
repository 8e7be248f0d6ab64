"""The one writer of a synthetic folder (``synthesize``, ``filter-pairs``, scored synthesis).

A synthetic folder is a chip store (``meta.synthetic = True``, only ``train``) that the segmenter
reads like real chips, plus, for a GIS analyst::

    images/syn_NNNNN.tif    each pair's image, in the source dtype, at its place on the grid
    labels/syn_NNNNN.tif    its label chip (class ids, palette, nodata 255)
    images.vrt, labels.vrt  mosaics of the chips (the labels styled by their palette)
    labels.qml              the QGIS style of the labels
    report.json             what was made (class shares vs the real labels, TV distance, ...)
    class_shares.png        real vs synthetic class shares
    samples.png             the first pairs, each image beside its mask

The chips lie on one grid (:func:`chip_grid`) row by row from the first chip's transform; every
GeoTIFF carries the run's ``SATSYNTH_*`` tags, its index and a description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from satsynth.contract import style_path
from satsynth.data.classes import IGNORE_INDEX, ClassTable, write_qml
from satsynth.data.store import ChipStoreWriter, StoreMeta
from satsynth.generator.report import class_shares, plot_class_shares, sample_grid, tv_distance
from satsynth.io import write_json

#: Pairs shown in ``samples.png``.
GRID_SAMPLES = 16
#: GDAL's names of the chip dtypes (the VRT's ``dataType``).
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
              "uint32": "UInt32", "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def chip_grid(first: Sequence[float], count: int, size: int) -> list[tuple[float, ...]]:
    """Affine transforms (a, b, c, d, e, f) of ``count`` chips of ``size`` px on a square-ish
    grid (ceil(sqrt(count)) columns), row by row from the first chip's transform ``first``."""
    a, b, c, d, e, f = (float(v) for v in first[:6])
    cols = max(1, math.ceil(math.sqrt(count)))
    return [(a, b, c + (i % cols) * size * a, d, e, f + (i // cols) * size * e)
            for i in range(count)]


def crs_wkt(crs: str | None) -> str | None:
    """The WKT of a CRS given in any form rasterio reads (None: no CRS)."""
    if not crs:
        return None
    from rasterio.crs import CRS

    return CRS.from_user_input(crs).to_wkt()


def write_vrt(path: Path, files: list[str], transforms: list[tuple[float, ...]], size: int,
              crs: str | None, bands: int, dtype: str, table: ClassTable | None) -> Path:
    """A VRT mosaic of chips on a regular grid, written as XML (GDAL's BuildVRT is not needed).

    Args:
        path: the ``.vrt`` to write.
        files: each chip's file, relative to the VRT.
        transforms: each chip's affine transform (a, b, c, d, e, f).
        size: the chips' side in px.
        crs: the chips' CRS (None: pixel space).
        bands, dtype: the chips' band count and numpy dtype name.
        table: the class table of a label mosaic (palette, nodata 255), None for images.

    Returns:
        ``path``.
    """
    a, _, _, _, e, _ = transforms[0]
    xs = [t[2] for t in transforms]
    ys = [t[5] for t in transforms]
    minx = min(xs)
    top = max(ys) if e < 0 else min(ys)
    width = round((max(xs) - minx) / a) + size
    height = round(abs(max(ys) - min(ys)) / abs(e)) + size
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    wkt = crs_wkt(crs)
    if wkt:
        lines.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(wkt)}</SRS>')
    lines.append(f"  <GeoTransform>{minx!r}, {a!r}, 0.0, {top!r}, 0.0, {e!r}</GeoTransform>")
    gdt = GDAL_TYPES.get(dtype, "Float32")
    for b in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdt}" band="{b}">')
        lines += _band_style(b, bands, table)
        for name, t in zip(files, transforms, strict=True):
            xoff = round((t[2] - minx) / a)
            yoff = round(abs(t[5] - top) / abs(e))
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SourceProperties RasterXSize="{size}" RasterYSize="{size}" '
                f'DataType="{gdt}" BlockXSize="{size}" BlockYSize="{size}"/>',
                f'      <SrcRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/>',
                f'      <DstRect xOff="{xoff}" yOff="{yoff}" xSize="{size}" ySize="{size}"/>',
                "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _band_style(band: int, bands: int, table: ClassTable | None) -> list[str]:
    """A VRT band's nodata, colour interpretation and palette lines."""
    if table is None:
        if bands >= 3 and band <= 3:
            return [f"    <ColorInterp>{('Red', 'Green', 'Blue')[band - 1]}</ColorInterp>"]
        return []
    cmap = table.colormap()
    entries = [f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
               for r, g, b, a in (cmap.get(v, (0, 0, 0, 0)) for v in range(256))]
    return [f"    <NoDataValue>{IGNORE_INDEX}</NoDataValue>",
            "    <ColorInterp>Palette</ColorInterp>", "    <ColorTable>", *entries,
            "    </ColorTable>"]


def class_share_records(table: ClassTable, real: np.ndarray, synthetic: np.ndarray
                        ) -> list[dict[str, Any]]:
    """``report.json``'s ``classes``: each class's real and synthetic pixel share."""
    return [{"index": i, "id": c.id, "name": c.name, "real_share": round(float(real[i]), 6),
             "synthetic_share": round(float(synthetic[i]), 6)}
            for i, c in enumerate(table.classes)]


class SyntheticStoreWriter:
    """Writes a synthetic folder (see the module docstring) atomically: nothing is at ``out``
    until :meth:`finish` has written everything and the block ends without an error.

    Use as a context manager: :meth:`add` each pair in order (its GeoTIFFs are written at once),
    optionally :meth:`set_scores`, then :meth:`finish` with the report.
    """

    def __init__(self, out: str | Path, meta: StoreMeta, count: int,
                 tags: dict[str, str] | None = None) -> None:
        """``meta``: the store's metadata (synthetic); ``count``: the pairs to come;
        ``tags``: ``SATSYNTH_*`` GeoTIFF tags every chip carries."""
        self.path = Path(out)
        self.meta = meta
        self.tags = dict(tags or {})
        self._store = ChipStoreWriter(out, meta, {"train": count})
        self.tmp = self._store.tmp
        try:
            (self.tmp / "images").mkdir()
            (self.tmp / "labels").mkdir()
        except BaseException as exc:
            self._store.abort(type(exc), exc, exc.__traceback__)
            raise
        self._crs = crs_wkt(meta.crs)
        self._lut = meta.classes.index_to_id_lut()
        self._counts = np.zeros(meta.classes.num_classes, np.int64)
        self.names: list[str] = []
        self.transforms: list[tuple[float, ...]] = []
        self._preview: list[tuple[np.ndarray, np.ndarray]] = []

    def __enter__(self) -> SyntheticStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._store.__exit__(exc_type, exc, tb)

    def add(self, image: np.ndarray, label: np.ndarray, transform: Sequence[float],
            tags: dict[str, str] | None = None, note: str = "",
            label_tags: dict[str, str] | None = None) -> int:
        """Add one pair.

        Args:
            image: (C, S, S) in the store's dtype (source values).
            label: (S, S) class indices (255: undecided).
            transform: the chip's affine transform (a, b, c, d, e, f).
            tags: GeoTIFF tags of this pair beside the writer's.
            note: added to the GeoTIFFs' descriptions.
            label_tags: tags of the label GeoTIFF only (over ``tags``).

        Returns:
            The pair's index (its files are ``images|labels/syn_NNNNN.tif``).
        """
        import rasterio
        from rasterio.transform import Affine

        i = self._store.add("train", image, label, transform, source=0)
        name = f"syn_{i:05d}.tif"
        t = tuple(float(v) for v in transform[:6])
        s = self.meta.chip_size
        profile = {"driver": "GTiff", "width": s, "height": s, "transform": Affine(*t),
                   "crs": self._crs, "compress": "deflate"}
        chip_tags = {**self.tags, **(tags or {}), "SATSYNTH_INDEX": str(i)}
        with rasterio.open(self.tmp / "images" / name, "w", count=self.meta.bands,
                           dtype=self.meta.dtype, **profile) as dst:
            dst.write(image)
            dst.update_tags(**chip_tags,
                            TIFFTAG_IMAGEDESCRIPTION=f"SatSynth synthetic image {i}{note}")
        with rasterio.open(self.tmp / "labels" / name, "w", count=1, dtype="uint8",
                           nodata=IGNORE_INDEX, **profile) as dst:
            dst.write(self._lut[label][None])
            dst.write_colormap(1, self.meta.classes.colormap())
            dst.update_tags(**{**chip_tags, **(label_tags or {})},
                            TIFFTAG_IMAGEDESCRIPTION=f"SatSynth synthetic labels {i}{note}")
        k = self.meta.classes.num_classes
        self._counts += np.bincount(np.asarray(label).ravel(), minlength=256)[:k]
        if len(self._preview) < GRID_SAMPLES:
            self._preview.append((np.asarray(image), np.asarray(label)))
        self.names.append(name)
        self.transforms.append(t)
        return i

    def set_scores(self, scores: np.ndarray) -> None:
        """Pair-consistency scores of every pair, in order (``train.scores.npy``, footprints)."""
        self._store.set_scores("train", scores)

    def finish(self, report: dict[str, Any], real_shares: np.ndarray | None) -> float | None:
        """Write the mosaics, the style, the previews and ``report.json``.

        Args:
            report: the report's entries; ``count``, ``tv_distance`` and ``classes`` are set
                here from the pairs written (in place where the report already has them).
            real_shares: the real training labels' class shares (None or zeros: unknown).

        Returns:
            The TV distance between the real and the written class shares (None: unknown).
        """
        table = self.meta.classes
        for sub, bands, dtype, style in (("images", self.meta.bands, self.meta.dtype, None),
                                         ("labels", 1, "uint8", table)):
            write_vrt(self.tmp / f"{sub}.vrt", [f"{sub}/{n}" for n in self.names],
                      self.transforms, self.meta.chip_size, self.meta.crs, bands, dtype, style)
        write_qml(style_path(self.tmp / "labels.vrt"), table)
        real = np.zeros(table.num_classes) if real_shares is None else \
            np.asarray(real_shares, np.float64)
        syn = class_shares(self._counts)
        tv = tv_distance(real, self._counts) if real.sum() > 0 else None
        plot_class_shares(class_shares(real), syn, table, self.tmp / "class_shares.png", tv)
        images = self.meta.normalizer.to_model(np.stack([p[0] for p in self._preview]))
        sample_grid(images, np.stack([p[1] for p in self._preview]), table,
                    self.tmp / "samples.png")
        report.update(count=len(self.names), tv_distance=round(tv, 5) if tv is not None else None,
                      classes=class_share_records(table, class_shares(real), syn))
        write_json(self.tmp / "report.json", report)
        return tv

    def outputs(self) -> dict[str, str]:
        """The command's outputs naming the folder's files."""
        return self.outputs_of(self.path)

    @staticmethod
    def outputs_of(out: Path) -> dict[str, str]:
        """The outputs naming the files of the synthetic folder ``out``."""
        return {"synthetic": str(out), "images_vrt": str(out / "images.vrt"),
                "labels_vrt": str(out / "labels.vrt"), "labels_qml": str(style_path(out / "labels.vrt")),
                "report": str(out / "report.json"), "grid": str(out / "samples.png"),
                "class_shares_png": str(out / "class_shares.png")}


__all__ = ["GDAL_TYPES", "GRID_SAMPLES", "SyntheticStoreWriter", "chip_grid", "crs_wkt",
           "write_vrt"]
