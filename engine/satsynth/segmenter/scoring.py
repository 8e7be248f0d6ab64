"""How good is a synthetic pair? Scoring a synthetic folder (``score-pairs``), and the scoring
stage's public names.

The stage's parts, one job each: :mod:`~satsynth.segmenter.consistency` (the pair scores: a
segmenter trained on real chips segments each synthetic image, and the pair scores its agreement
with the pair's own mask), :mod:`~satsynth.segmenter.pair_plots` (the PNG of the most and least
consistent pairs), :mod:`~satsynth.segmenter.filtering` (keeping the most consistent pairs as a
new synthetic folder) and :mod:`~satsynth.segmenter.realism` (FID/KID, only with a local
feature-extractor weights file).

``score_pairs`` stores the scores in the synthetic store (``train.scores.npy``, read back by
:class:`~satsynth.data.store.ChipStore`), as attributes of its footprints (``chips.gpkg``: miou,
pixel_accuracy, rank, to sort in QGIS), in ``report.json`` and as a PNG of the most and least
consistent pairs.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.store import ChipStore, write_scored_index
from satsynth.errors import SatSynthError
from satsynth.io import atomic_dir, atomic_path, read_json, write_json
from satsynth.segmenter.consistency import (
    GRID_PAIRS,
    load_scorer,
    pair_scores,
    scoring_record,
    store_scorer,
    summarize_scores,
)
from satsynth.segmenter.filtering import filter_pairs, filtered_pool, select_pairs
from satsynth.segmenter.pair_plots import SCORED_GRID, plot_pair_ends, plot_scored_pairs
from satsynth.segmenter.realism import FID_MAX_REAL, fid_kid, real_store

log = logging.getLogger("satsynth")


@contextmanager
def _updated_copy(folder: Path) -> Iterator[Path]:
    """A copy of ``folder`` (hard links where possible) that replaces it when the block ends
    without an error. Files changed in the copy must be written as new files (atomic_path)."""
    with atomic_dir(folder) as tmp:
        try:
            shutil.copytree(folder, tmp, dirs_exist_ok=True, copy_function=os.link)
        except OSError:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        yield tmp


def score_pairs(synthetic: str | Path, segmenter: str | Path, device: str = "auto",
                batch_size: int = 32, fid_weights: str | Path | None = None,
                real: str | Path | None = None) -> dict[str, Any]:
    """Score every pair of a synthetic folder with a real-trained segmenter, in place (the
    folder is replaced as a whole when everything is written).

    Args:
        synthetic: the synthetic folder (``synthesize``, ``filter-pairs``).
        segmenter: a segmenter folder trained on real chips.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: pairs segmented together.
        fid_weights: a local Inception weights file: also FID/KID against the real training
            chips of ``real`` (default: the segmenter's training dataset).

    Returns:
        The outputs: the folder, its scores, footprints, report and ``grid`` (the PNG of the
        most and least consistent pairs), the pair mIoU's mean and median (and FID/KID).
    """
    syn_path = Path(synthetic)
    store = ChipStore(syn_path)
    if not store.has_split("train") or store.count("train") == 0:
        raise SatSynthError("the synthetic store holds no chips", syn_path)
    if not store.meta.synthetic:
        log.warning("%s is not marked synthetic; scoring its chips anyway", syn_path)
    model, cfg, dev = store_scorer(segmenter, store, device)
    chips = store.split("train")
    realism = None
    if fid_weights is not None:  # first: a bad weights file fails before the longer scoring
        realism = fid_kid(store, real_store(real, cfg, segmenter), weights=fid_weights,
                          device=dev)
    scores = pair_scores(model, chips, cfg.normalization, cfg.num_classes, batch_size, dev)
    seg_info = scoring_record(segmenter, cfg, scores)
    with _updated_copy(syn_path) as tmp:
        with atomic_path(tmp / "train.scores.npy") as f:
            np.save(f, scores.astype(np.float32))
        if (tmp / "chips.gpkg").is_file():
            with atomic_path(tmp / "chips.gpkg") as f:
                write_scored_index(syn_path / "chips.gpkg", f, "train", scores)
        store.meta.extra["pair_scores"] = seg_info
        report = read_json(tmp / "report.json") if (tmp / "report.json").is_file() else {}
        report["pair_consistency"] = seg_info
        if realism is not None:
            store.meta.extra["realism"] = report["realism"] = realism
        write_json(tmp / "dataset.json", store.meta.to_dict())
        write_json(tmp / "report.json", report)
        plot_pair_ends(model, cfg.normalization, chips, scores, store.normalizer, store.classes,
                       tmp / SCORED_GRID, dev)
    return scored_outputs(syn_path, segmenter, seg_info, realism)


def scored_outputs(folder: Path, segmenter: str | Path, record: dict[str, Any],
                   realism: dict[str, Any] | None) -> dict[str, Any]:
    """The outputs of a scoring (logged): the folder's scored files and the pair mIoU."""
    m = record["summary"]["miou"]
    log.info("scored %d pairs with %s: pair mIoU mean %s, median %s",
             record["summary"]["pairs"], segmenter, f"{m['mean']:.3f}" if m else "n/a",
             f"{m['median']:.3f}" if m else "n/a")
    outputs: dict[str, Any] = {
        "synthetic": str(folder), "scores": str(folder / "train.scores.npy"),
        "footprints": str(folder / "chips.gpkg"), "report": str(folder / "report.json"),
        "grid": str(folder / SCORED_GRID),
        "pair_miou_mean": m["mean"] if m else None,
        "pair_miou_median": m["median"] if m else None}
    if realism is not None:
        outputs.update(fid=realism["fid"], kid_mean=realism["kid_mean"])
    return outputs


__all__ = ["FID_MAX_REAL", "GRID_PAIRS", "SCORED_GRID", "fid_kid", "filter_pairs",
           "filtered_pool", "load_scorer", "pair_scores", "plot_scored_pairs", "score_pairs",
           "scored_outputs", "select_pairs", "summarize_scores"]
