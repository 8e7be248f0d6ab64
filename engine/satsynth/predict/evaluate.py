"""``satsynth evaluate``: score a segmenter on a chip store split, or on a whole image with its
label raster by predicting the image as ``satsynth predict`` does."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.predict.predict import predict_raster
from satsynth.segmenter.evaluate import evaluate_dataset, model_info, write_evaluation
from satsynth.segmenter.model import load_segmenter_config

log = logging.getLogger("satsynth")

WINDOW_ROWS = 512  # rows per window when comparing whole rasters


def evaluate(model_dir: str | Path, out: str | Path, dataset: str | Path | None = None,
             split: str = "val", image: str | Path | None = None,
             labels: str | Path | None = None, device: str = "auto", batch_size: int = 16,
             labels_on_image_grid: bool = False) -> dict[str, Any]:
    """Score a segmenter on ``dataset``'s ``split`` or on the raster pair ``image``/``labels``
    (aligned by prepare's rules, see :func:`satsynth.data.labels.check_label_grid`);
    write report.json/.md/.html and confusion.png into ``out``."""
    if (dataset is None) == (image is None):
        raise SatSynthError("give either --dataset or --image with --labels")
    if image is not None and labels is None:
        raise SatSynthError("--image needs --labels (the reference label raster)")
    if dataset is not None:
        return evaluate_dataset(model_dir, out, dataset, split=split, device=device,
                                batch_size=batch_size)
    return evaluate_pair(model_dir, out, Path(image), Path(labels),  # type: ignore[arg-type]
                         device=device, labels_on_image_grid=labels_on_image_grid)


def evaluate_pair(model_dir: str | Path, out: str | Path, image: Path, labels: Path,
                  device: str = "auto", labels_on_image_grid: bool = False) -> dict[str, Any]:
    """Predict the whole ``image`` with :func:`~satsynth.predict.predict.predict_raster` and
    score it against ``labels``; write the evaluation report into ``out``."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from satsynth.data.labels import check_label_grid
    from satsynth.data.sources import grid_of
    from satsynth.segmenter.metrics import SegmentationMetrics

    check_output(out, "evaluation", inputs=[model_dir, image, labels], into=True)
    cfg = load_segmenter_config(model_dir)
    metrics = SegmentationMetrics(cfg.num_classes)
    img = _open_raster(image, "image")
    lbl = _open_raster(labels, "label")
    with img, lbl:
        if img.count != cfg.in_channels:
            raise SatSynthError(f"the image has {img.count} band(s), the model expects "
                                f"{cfg.in_channels}", image)
        # prepare's rules: the same grid, or warped onto the image's grid where they overlap
        cover = check_label_grid(image, grid_of(img), labels, grid_of(lbl), labels_on_image_grid)
        ref = lbl
        if cover is not None:
            ref = WarpedVRT(lbl, crs=img.crs, transform=img.transform, width=img.width,
                            height=img.height, resampling=Resampling.nearest, add_alpha=True)
            log.warning("%s: label grid differs from the image's: warped onto it with nearest "
                        "neighbour; they cover %.0f%% of the image", labels.name, 100 * cover)
        read_labels = label_lut_reader(ref, cfg.class_table, labels, masked=cover is not None)
        info = _compare_with_prediction(model_dir, image, img, read_labels, metrics, device,
                                        cfg.class_table)
    return write_evaluation(metrics, cfg.class_table, out, {**model_info(model_dir, cfg), **info})


def _compare_with_prediction(model_dir: str | Path, image: Path, img: Any, read_labels: Any,
                             metrics: Any, device: str, table: ClassTable) -> dict[str, Any]:
    import torch
    from rasterio.windows import Window

    lut = table.id_to_index_lut()
    with tempfile.TemporaryDirectory(prefix="satsynth-eval-") as tmp:
        pred_path = Path(tmp) / "prediction.tif"
        predict_raster(model_dir, image, pred_path, device=device)
        pred = _open_raster(pred_path, "prediction")
        with pred:
            starts = range(0, img.height, WINDOW_ROWS)
            for r in progress.track(starts, "evaluate", unit="window"):
                h = min(WINDOW_ROWS, img.height - r)
                w = Window(0, r, img.width, h)
                ref = read_labels(w)
                p = lut[pred.read(1, window=w).astype(np.uint8)]
                metrics.update(torch.from_numpy(p.astype(np.int64)),
                               torch.from_numpy(ref.astype(np.int64)))
    return {"image": str(image), "method": "whole raster through satsynth.predict",
            "width": img.width, "height": img.height}


def label_lut_reader(src: Any, table: ClassTable, path: Path, masked: bool = False) -> Any:
    """A function ``window -> (H,W) uint8 class indices`` for a label raster: one band of class
    ids, or an RGB(A) colour-coded mask matched against the class colours. ``masked``: pixels
    outside the raster's mask (e.g. beyond a warped label raster's footprint) are ignored."""
    ignore_ids = set(table.ignore_ids)
    nodata = src.nodata

    def outside(window: Any) -> np.ndarray | None:
        return src.read_masks(1, window=window) == 0 if masked else None
    if src.count >= 3 and src.dtypes[0] == "uint8":
        colours = {((r << 16) | (g << 8) | b): i for i, (r, g, b) in
                   enumerate(c.color for c in table.classes)}
        ign = {((r << 16) | (g << 8) | b) for r, g, b in table.ignore_colors}

        def read_rgb(window: Any) -> np.ndarray:
            rgb = src.read([1, 2, 3], window=window).astype(np.int32)
            packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            outp = np.full(packed.shape, IGNORE_INDEX, np.uint8)
            off = outside(window)
            known = np.zeros(packed.shape, bool) if off is None else off
            for code, i in colours.items():
                m = packed == code if off is None else (packed == code) & ~off
                outp[m] = i
                known |= m
            for code in ign:
                known |= packed == code
            if not known.all():
                bad = np.unique(packed[~known])[:5]
                raise SatSynthError("label colours not in the class table: " + ", ".join(
                    f"#{int(c):06x}" for c in bad), path)
            return outp

        return read_rgb
    lut = table.id_to_index_lut()
    allowed = np.zeros(256, bool)
    allowed[table.ids] = True
    for v in ignore_ids | {IGNORE_INDEX} | (
            {int(nodata)} if nodata is not None and 0 <= nodata < 256 else set()):
        allowed[v] = True

    def read_ids(window: Any) -> np.ndarray:
        v = src.read(1, window=window)
        off = outside(window)
        if off is not None:
            v[off] = IGNORE_INDEX
        if v.dtype != np.uint8:
            if np.issubdtype(v.dtype, np.floating):
                v = np.nan_to_num(v, nan=255)
            if v.size and (v.min() < 0 or v.max() > 255):
                bad = np.unique(v[(v < 0) | (v > 255)])[:5]
                raise SatSynthError(f"label values not in the class table: {bad.tolist()}", path)
            v = v.astype(np.uint8)
        if not allowed[v].all():
            bad, counts = np.unique(v[~allowed[v]], return_counts=True)
            raise SatSynthError("label values not in the class table: " + ", ".join(
                f"{int(b)} ({int(c)} px)" for b, c in zip(bad, counts, strict=True)), path)
        outp = lut[v]
        if nodata is not None and 0 <= nodata < 256:
            outp[v == int(nodata)] = IGNORE_INDEX
        if off is not None:
            outp[off] = IGNORE_INDEX
        return outp

    return read_ids


def _open_raster(path: Path, what: str) -> Any:
    import rasterio

    if not path.is_file():
        raise SatSynthError(f"{what} raster not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rasterio.open(path)
    except Exception as exc:  # noqa: BLE001 - GDAL's error types vary
        raise SatSynthError(f"cannot open {what} raster ({exc})", path) from None
