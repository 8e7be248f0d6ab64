"""Evaluating a trained segmenter on a chip store split or on a whole image/label raster pair."""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipSplit, ChipStore
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output

log = logging.getLogger("satsynth")

WINDOW_ROWS = 512  # rows per window when comparing whole rasters


def evaluate_chips(model: Any, chips: ChipSplit, normalizer: Normalizer, metrics: Any,
                   batch_size: int, device: Any, indices: np.ndarray | None = None,
                   shard: tuple[int, int] = (1, 0), show_progress: bool = False) -> None:
    """Run ``model`` over chips (all, or ``indices``) and add the results to ``metrics``.

    With ``shard=(n, i)`` process ``i`` of ``n`` takes every n-th batch (the metrics sync)."""
    import torch

    from satsynth.segmenter.train import forward_logits

    idx = np.arange(len(chips)) if indices is None else np.asarray(indices)
    starts = list(range(0, len(idx), batch_size))[shard[1]::shard[0]]
    was_training = model.training
    model.eval()
    items = progress.track(starts, "evaluate", unit="batch") if show_progress else starts
    with torch.inference_mode():
        for s in items:
            j = idx[s:s + batch_size]
            x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[j]))).to(device)
            y = torch.from_numpy(np.asarray(chips.labels[j]).astype(np.int64)).to(device)
            metrics.update(forward_logits(model, x).argmax(1), y)
    if was_training:
        model.train()


def _check_same_classes(model_table: ClassTable, data_table: ClassTable, where: Path) -> None:
    a = [(c.id, c.name) for c in model_table.classes]
    b = [(c.id, c.name) for c in data_table.classes]
    if a != b:
        raise SatSynthError(f"the dataset's classes {[n for _, n in b]} differ from the model's "
                            f"{[n for _, n in a]}", where)


def evaluate(model_dir: str | Path, out: str | Path, dataset: str | Path | None = None,
             split: str = "val", image: str | Path | None = None,
             labels: str | Path | None = None, device: str = "auto", batch_size: int = 16,
             labels_on_image_grid: bool = False) -> dict[str, Any]:
    """Score a segmenter on ``dataset``'s ``split`` or on the raster pair ``image``/``labels``
    (aligned by prepare's rules, see :func:`satsynth.data.labels.check_label_grid`);
    write report.json/.md/.html and confusion.png into ``out``."""
    from satsynth.device import resolve_device
    from satsynth.segmenter.metrics import SegmentationMetrics
    from satsynth.segmenter.model import load_segmenter
    from satsynth.segmenter.report import write_eval_report

    if (dataset is None) == (image is None):
        raise SatSynthError("give either --dataset or --image with --labels")
    if image is not None and labels is None:
        raise SatSynthError("--image needs --labels (the reference label raster)")
    check_output(out, "evaluation", inputs=[model_dir, dataset, image, labels], into=True)
    dev = resolve_device(device)
    model, cfg = load_segmenter(model_dir, dev)
    table = cfg.class_table
    metrics = SegmentationMetrics(cfg.num_classes, dev)
    info: dict[str, Any] = {"model": str(model_dir), "arch": cfg.arch, "encoder": cfg.encoder}
    if dataset is not None:
        store = ChipStore(dataset)
        _check_same_classes(table, store.classes, store.path)
        if store.meta.bands != cfg.in_channels:
            raise SatSynthError(f"the dataset has {store.meta.bands} band(s), the model expects "
                                f"{cfg.in_channels}", store.path)
        if not store.has_split(split):
            raise SatSynthError(f"the dataset has no '{split}' split", store.path)
        # asking for a split's scores here is the final evaluation (this is how the test split
        # is opened; training and selection never can)
        chips = store.split(split, final_evaluation=True)
        if len(chips) == 0:
            raise SatSynthError(f"the '{split}' split is empty", store.path)
        if store.meta.synthetic:
            log.warning("%s is synthetic: these scores do not measure real-data accuracy",
                        store.path)
        evaluate_chips(model, chips, cfg.normalizer, metrics, batch_size, dev,
                       show_progress=True)
        info.update(dataset=str(store.path), split=split, chips=len(chips), method="chips")
    else:
        info.update(_evaluate_pair(model, cfg, model_dir, Path(image), Path(labels), metrics, dev,
                                   device, batch_size, labels_on_image_grid))
    scores = metrics.compute(table.names)
    out = Path(out)
    paths = write_eval_report(scores, out, table, info)
    log.info("mIoU %.4f, overall accuracy %.4f over %d pixels", scores["miou"],
             scores["overall_accuracy"], scores["pixels"])
    return {**{k: str(v) for k, v in paths.items()}, "miou": scores["miou"]}


# --------------------------------------------------------------------------------------------
# raster pairs


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


def _evaluate_pair(model: Any, cfg: Any, model_dir: str | Path, image: Path, labels: Path,
                   metrics: Any, dev: Any, device: str, batch_size: int,
                   on_image_grid: bool = False) -> dict[str, Any]:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from satsynth.data.labels import check_label_grid
    from satsynth.data.sources import grid_of

    img = _open_raster(image, "image")
    lbl = _open_raster(labels, "label")
    with img, lbl:
        if img.count != cfg.in_channels:
            raise SatSynthError(f"the image has {img.count} band(s), the model expects "
                                f"{cfg.in_channels}", image)
        # prepare's rules: the same grid, or warped onto the image's grid where they overlap
        cover = check_label_grid(image, grid_of(img), labels, grid_of(lbl), on_image_grid)
        ref = lbl
        if cover is not None:
            ref = WarpedVRT(lbl, crs=img.crs, transform=img.transform, width=img.width,
                            height=img.height, resampling=Resampling.nearest, add_alpha=True)
            log.warning("%s: label grid differs from the image's: warped onto it with nearest "
                        "neighbour; they cover %.0f%% of the image", labels.name, 100 * cover)
        read_labels = label_lut_reader(ref, cfg.class_table, labels, masked=cover is not None)
        predict_mod = _predict_module()
        if predict_mod is not None:
            return _pair_through_prediction(predict_mod, model_dir, image, img, read_labels,
                                            metrics, device, cfg)
        return _pair_by_chips(model, cfg, img, read_labels, metrics, dev, batch_size, image)


def _predict_module() -> Any:
    try:
        mod = importlib.import_module("satsynth.predict.predict")
    except ImportError:
        return None
    return mod if hasattr(mod, "predict_raster") else None


def _pair_through_prediction(mod: Any, model_dir: str | Path, image: Path, img: Any,
                             read_labels: Any, metrics: Any, device: str, cfg: Any
                             ) -> dict[str, Any]:
    import torch
    from rasterio.windows import Window

    lut = cfg.class_table.id_to_index_lut()
    with tempfile.TemporaryDirectory(prefix="satsynth-eval-") as tmp:
        pred_path = Path(tmp) / "prediction.tif"
        res = mod.predict_raster(model_dir, image, pred_path, device=device)
        if not pred_path.is_file():  # the prediction may name its raster in the outputs
            cand = [v for v in (res or {}).values() if isinstance(v, str)
                    and v.lower().endswith((".tif", ".tiff"))]
            if not cand:
                raise SatSynthError("the prediction wrote no class raster", pred_path)
            pred_path = Path(cand[0])
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


def _pair_by_chips(model: Any, cfg: Any, img: Any, read_labels: Any, metrics: Any, dev: Any,
                   batch_size: int, image: Path) -> dict[str, Any]:
    """No prediction stage: tile the pair into chips (edges padded, padding ignored)."""
    import torch
    from rasterio.windows import Window

    from satsynth.segmenter.train import forward_logits

    s = int(cfg.chip_size)
    norm = cfg.normalizer
    tiles = [(r, c) for r in range(0, img.height, s) for c in range(0, img.width, s)]
    batches = [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]
    model.eval()
    with torch.inference_mode():
        for batch in progress.track(batches, "evaluate", unit="batch"):
            xs = np.zeros((len(batch), img.count, s, s), np.float32)
            ys = np.full((len(batch), s, s), IGNORE_INDEX, np.uint8)
            for n, (r, c) in enumerate(batch):
                w = Window(c, r, min(s, img.width - c), min(s, img.height - r))
                data = img.read(window=w)
                valid = img.read_masks(1, window=w) > 0
                h_, w_ = data.shape[1:]
                x = norm.to_model(data)
                xs[n] = np.pad(x, ((0, 0), (0, s - h_), (0, s - w_)), mode="edge")
                ref = read_labels(w)
                ref[~valid] = IGNORE_INDEX
                ys[n, :h_, :w_] = ref
            pred = forward_logits(model, torch.from_numpy(xs).to(dev)).argmax(1)
            metrics.update(pred, torch.from_numpy(ys.astype(np.int64)).to(dev))
    return {"image": str(image), "method": "chips cut from the raster pair",
            "width": img.width, "height": img.height, "chips": len(tiles)}
