"""``satsynth evaluate``: score a segmenter on a chip store split, or on a whole image with its
label raster by predicting the image as ``satsynth predict`` does."""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.data.labels import (
    UNKNOWN_HINT,
    CodeMap,
    RasterLabelReader,
    code_histogram,
    describe_unknown,
)
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.predict.predict import predict_raster
from satsynth.raster import Grid, grid_of, open_raster, read_window
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
    score it against ``labels``, read as ``prepare`` reads them
    (:class:`~satsynth.data.labels.RasterLabelReader`, as for ``prepare --labels``: class ids
    or an RGB colour mask, warped onto the image grid when needed); write the evaluation report
    into ``out``.

    Pixels without a label, and pixels the prediction leaves as nodata (the image has no data
    there, by :func:`satsynth.raster.valid_mask`), are not counted."""
    from satsynth.segmenter.metrics import SegmentationMetrics

    check_output(out, "evaluation", inputs=[model_dir, image, labels], into=True)
    cfg = load_segmenter_config(model_dir)
    with open_raster(image, "image") as img:
        if img.count != cfg.in_channels:
            raise SatSynthError(f"the image has {img.count} band(s), the model expects "
                                f"{cfg.in_channels}", image)
        grid = grid_of(img)
    reader = RasterLabelReader(labels, image, grid, "raster", labels_on_image_grid)
    try:
        to_classes = CodeMap(reader.kind, cfg.classes)
        _check_label_values(reader, to_classes, grid)
        metrics = SegmentationMetrics(cfg.num_classes)
        _compare_with_prediction(model_dir, image, grid, reader, to_classes, metrics, device,
                                 cfg.classes)
    finally:
        reader.close()
    info = {"image": str(image), "method": "whole raster through satsynth.predict",
            "width": grid.width, "height": grid.height}
    return write_evaluation(metrics, cfg.classes, out, {**model_info(model_dir, cfg), **info})


def _row_windows(grid: Grid, stage: str) -> Iterator[Any]:
    """Full-width windows of :data:`WINDOW_ROWS` rows over ``grid``, with progress."""
    from rasterio.windows import Window

    for r in progress.track(range(0, grid.height, WINDOW_ROWS), stage, unit="window"):
        yield Window(0, r, grid.width, min(WINDOW_ROWS, grid.height - r))


def _check_label_values(reader: RasterLabelReader, to_classes: CodeMap, grid: Grid) -> None:
    """Refuse labels holding values (or colours) outside the class table, before predicting."""
    hist: Counter = Counter()
    for w in _row_windows(grid, "evaluate: reading labels"):
        hist.update(code_histogram(reader.read_codes(w)))
    bad = to_classes.unknown(hist)
    if bad:
        raise SatSynthError(describe_unknown(reader.kind, bad) + UNKNOWN_HINT, reader.path)


def _compare_with_prediction(model_dir: str | Path, image: Path, grid: Grid,
                             reader: RasterLabelReader, to_classes: CodeMap, metrics: Any,
                             device: str, table: ClassTable) -> None:
    import torch

    lut = table.id_to_index_lut()
    with tempfile.TemporaryDirectory(prefix="satsynth-eval-") as tmp:
        pred_path = Path(tmp) / "prediction.tif"
        predict_raster(model_dir, image, pred_path, device=device)
        with open_raster(pred_path, "prediction") as pred:
            for w in _row_windows(grid, "evaluate"):
                ref = to_classes(reader.read_codes(w))
                p = lut[read_window(pred, pred_path, indexes=1, window=w)]
                ref[p == IGNORE_INDEX] = IGNORE_INDEX  # no image data: not predicted, not counted
                metrics.update(torch.from_numpy(p.astype(np.int64)),
                               torch.from_numpy(ref.astype(np.int64)))
