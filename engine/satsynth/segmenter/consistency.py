"""Pair consistency: how well a segmenter trained on real chips agrees with each synthetic pair.

A real-trained segmenter segments each synthetic image; the pair's score is the agreement of that
prediction with the pair's own mask (the pair's mIoU over the classes in the mask or the
prediction, and its pixel accuracy; torchmetrics). A pair whose image shows what its mask says
scores high; a pair whose mask does not match its image scores low.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import SCORE_COLUMNS, ChipSplit, ChipStore, score_ranks
from satsynth.errors import SatSynthError

#: Pairs shown at each end of the PNG of the most and least consistent pairs.
GRID_PAIRS = 8


def pair_scores(model: Any, chips: ChipSplit, normalizer: Normalizer, num_classes: int,
                batch_size: int = 32, device: Any = "cpu", stage: str = "score-pairs"
                ) -> np.ndarray:
    """Each pair's agreement between ``model``'s prediction and its own mask.

    Args:
        model: the scoring segmenter (:func:`load_scorer`).
        chips: the pairs (images in the source dtype, labels as class indices).
        normalizer: the segmenter's input normalization.
        num_classes: the classes of the masks.
        batch_size, device: how the pairs go through the model.
        stage: the progress stage's name.

    Returns:
        (N, 2) float32: each pair's mIoU and pixel accuracy (``SCORE_COLUMNS``). Unlabeled mask
        pixels are left out; a pair without labeled pixels scores NaN.
    """
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy
    from torchmetrics.functional.segmentation import mean_iou

    from satsynth.segmenter.model import forward_logits

    n = len(chips)
    out = np.full((n, len(SCORE_COLUMNS)), np.nan, np.float32)
    k = int(num_classes)
    model.eval()
    with torch.inference_mode():
        for s in progress.track(range(0, n, batch_size), stage, unit="batch"):
            e = min(s + batch_size, n)
            x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[s:e]))).to(device)
            y = torch.from_numpy(np.asarray(chips.labels[s:e]).astype(np.int64)).to(device)
            pred = forward_logits(model, x).argmax(1)
            ignored = y == IGNORE_INDEX
            # ignored pixels become an extra class K in both, then K's IoU is dropped
            iou = mean_iou(pred.masked_fill(ignored, k), y.masked_fill(ignored, k),
                           num_classes=k + 1, per_class=True, input_format="index")[:, :k]
            present = iou >= 0
            miou = (iou.clamp(min=0) * present).sum(1) / present.sum(1).clamp(min=1)
            acc = multiclass_accuracy(pred, y, num_classes=k, average="micro",
                                      multidim_average="samplewise", ignore_index=IGNORE_INDEX)
            empty = (~ignored).sum((1, 2)) == 0
            miou[empty] = float("nan")
            acc = acc.float().masked_fill(empty, float("nan"))
            out[s:e, 0] = miou.cpu().numpy()
            out[s:e, 1] = acc.cpu().numpy()
    return out


def summarize_scores(scores: np.ndarray) -> dict[str, Any]:
    """Mean, quartiles and extremes of each score (NaN pairs counted apart)."""
    sc = np.asarray(scores, dtype=np.float64)
    summary: dict[str, Any] = {"pairs": int(len(sc)),
                               "unscored_pairs": int(np.isnan(sc[:, 0]).sum()) if len(sc) else 0}
    for j, name in enumerate(SCORE_COLUMNS):
        v = sc[:, j][~np.isnan(sc[:, j])] if len(sc) else np.zeros(0)
        if not len(v):
            summary[name] = None
            continue
        q = np.percentile(v, [0, 10, 25, 50, 75, 90, 100])
        summary[name] = {"mean": round(float(v.mean()), 5),
                         **{k: round(float(x), 5) for k, x in zip(
                             ("min", "p10", "p25", "median", "p75", "p90", "max"), q, strict=True)}}
    return summary


def store_scorer(segmenter: str | Path, store: ChipStore, device: str) -> tuple[Any, Any, Any]:
    """:func:`load_scorer` for the pairs of a synthetic store."""
    return load_scorer(segmenter, store.classes, store.meta.bands, store.meta.chip_size,
                       store.path, device)


def load_scorer(segmenter: str | Path, classes: ClassTable, bands: int, chip_size: int,
                where: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """Load a scoring segmenter and check it fits the pairs.

    Args:
        segmenter: the segmenter folder.
        classes, bands, chip_size: the pairs' (those of the synthetic folder, or of the
            generator that will make them: ``synthesize --score-with`` checks before sampling).
        where: named in the one-line error when the segmenter does not fit.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.

    Returns:
        ``(model, config, device)``.
    """
    from satsynth.device import resolve_device
    from satsynth.segmenter.model import check_chip_size, load_segmenter

    dev = resolve_device(device)
    model, cfg = load_segmenter(segmenter, dev)
    if [(c.id, c.name) for c in cfg.classes.classes] != [(c.id, c.name) for c in classes.classes]:
        raise SatSynthError(f"the pairs' classes {classes.names} differ from those of the "
                            f"segmenter {segmenter} ({cfg.classes.names})", where)
    if bands != cfg.in_channels:
        raise SatSynthError(f"the pairs have {bands} band(s), the segmenter "
                            f"{segmenter} expects {cfg.in_channels}", where)
    check_chip_size(model, chip_size, cfg.arch, cfg.encoder)
    return model, cfg, dev


def predict_masks(model: Any, chips: ChipSplit, idx: np.ndarray, normalizer: Normalizer,
                  dev: Any) -> np.ndarray:
    """The segmenter's class indices of the chips ``idx``."""
    import torch

    from satsynth.segmenter.model import forward_logits

    if not len(idx):
        return np.zeros((0, *chips.labels.shape[1:]), np.uint8)
    with torch.inference_mode():
        x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[idx]))).to(dev)
        return forward_logits(model, x).argmax(1).cpu().numpy().astype(np.uint8)


def extreme_pairs(scores: np.ndarray, per_end: int = GRID_PAIRS) -> np.ndarray:
    """Indices of the ``per_end`` most and least consistent pairs, best first."""
    ranks = score_ranks(scores)
    order = np.argsort(ranks)
    picked = np.unique(np.concatenate([order[:per_end], order[-per_end:]]))
    return picked[np.argsort(ranks[picked])]


def scoring_record(segmenter: str | Path, cfg: Any, scores: np.ndarray) -> dict[str, Any]:
    """What a scoring is recorded as (``report.json``'s ``pair_consistency``, ``dataset.json``'s
    ``pair_scores``): the segmenter, its validation mIoU and the scores' summary."""
    return {"segmenter": str(Path(segmenter).resolve()),
            "segmenter_val_miou": cfg.metrics.get("miou"),
            "columns": list(SCORE_COLUMNS), "summary": summarize_scores(scores)}
