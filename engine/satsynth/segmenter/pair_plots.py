"""The PNG of the most and least consistent synthetic pairs (image, mask, segmenter)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipSplit, score_ranks
from satsynth.io import atomic_path
from satsynth.segmenter.consistency import extreme_pairs, predict_masks

#: The PNG of the most and least consistent pairs written beside the synthetic chips.
SCORED_GRID = "pairs_by_score.png"


def plot_scored_pairs(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                      scores: np.ndarray, ranks: np.ndarray, total: int, table: ClassTable,
                      path: Path) -> Path:
    """PNG: each pair's image, its mask and the scoring segmenter's prediction, with the pair's
    rank and scores, best first (rows are the most and least consistent pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from satsynth.generator.report import to_display

    n = len(images)
    pal = np.vstack([table.palette_by_index()[:, :3], np.zeros((1, 3))]).astype(np.float32) / 255
    rgb = to_display(images)
    per_row = 4
    rows = max(1, math.ceil(n / per_row))
    fig, axes = plt.subplots(rows, per_row * 3, figsize=(per_row * 3 * 1.15, rows * 1.45),
                             dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def colour(lab: np.ndarray) -> np.ndarray:
        lab = np.asarray(lab, np.int64)
        return pal[np.where(lab == IGNORE_INDEX, len(pal) - 1, np.minimum(lab, len(pal) - 1))]

    for i in range(n):
        r, c = divmod(i, per_row)
        a_img, a_mask, a_pred = axes[r, 3 * c:3 * c + 3]
        a_img.imshow(rgb[i], interpolation="nearest")
        a_mask.imshow(colour(labels[i]), interpolation="nearest")
        a_pred.imshow(colour(preds[i]), interpolation="nearest")
        miou, acc = (float(v) for v in scores[i][:2])
        a_img.set_title(f"#{int(ranks[i])}/{total}", fontsize=7)
        a_mask.set_title(f"mask, mIoU {miou:.2f}" if not math.isnan(miou) else "mask",
                         fontsize=7)
        a_pred.set_title(f"segmenter, acc {acc:.2f}" if not math.isnan(acc) else "segmenter",
                         fontsize=7)
    fig.suptitle("Synthetic pairs by consistency (image | its mask | real-trained segmenter), "
                 "best first", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_pair_ends(model: Any, scorer_normalizer: Normalizer, chips: ChipSplit,
                   scores: np.ndarray, normalizer: Normalizer, table: ClassTable, path: Path,
                   device: Any = "cpu") -> Path:
    """:func:`plot_scored_pairs` of the most and least consistent of ``chips`` (their scores
    ``scores``, their store's ``normalizer``), segmented by the scoring ``model``."""
    idx = extreme_pairs(scores)
    preds = predict_masks(model, chips, idx, scorer_normalizer, device)
    return plot_scored_pairs(normalizer.to_model(np.asarray(chips.images[idx])),
                             np.asarray(chips.labels[idx]), preds, np.asarray(scores)[idx],
                             score_ranks(scores)[idx], len(scores), table, path)
