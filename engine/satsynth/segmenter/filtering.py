"""Keeping the most consistent synthetic pairs (``filter-pairs``, the experiment's filtered pools).

``filter_pairs`` writes a new synthetic folder with the most consistent pairs of scored ones,
complete like one ``synthesize`` writes (through the same
:class:`~satsynth.generator.synthetic_store.SyntheticStoreWriter`: GeoTIFF chips on the grid in
rank order, VRT mosaics, footprints with the scores, report), so ``train-segmenter`` takes it as
it is.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.sources import refuse_repeats
from satsynth.data.store import ChipSplit, ChipStore, score_ranks
from satsynth.errors import SatSynthError
from satsynth.generator.synthetic_store import SyntheticStoreWriter, chip_grid
from satsynth.io import read_json
from satsynth.outputs import check_output
from satsynth.segmenter.consistency import pair_scores, store_scorer, summarize_scores
from satsynth.segmenter.pair_plots import SCORED_GRID

log = logging.getLogger("satsynth")

#: The description added to a kept pair's GeoTIFFs.
FILTERED_NOTE = " (filtered by pair consistency)"


def select_pairs(scores: np.ndarray, keep: float | None = None,
                 min_score: float | None = None) -> np.ndarray:
    """Indices of the pairs to keep, most consistent first.

    Args:
        scores: (N, 2) pair scores (``SCORE_COLUMNS``).
        keep: the top fraction to keep (rounded up).
        min_score: the least pair mIoU kept (with ``keep``: both).

    Returns:
        The kept pairs' indices, best first; one line for options out of range.
    """
    if keep is None and min_score is None:
        raise SatSynthError("say which pairs to keep: --keep FRACTION and/or --min-score S")
    if keep is not None and not 0 < keep <= 1:
        raise SatSynthError(f"--keep must be a fraction in (0, 1], got {keep}")
    if min_score is not None and not 0 <= min_score <= 1:
        raise SatSynthError(f"--min-score must be in [0, 1], got {min_score}")
    order = np.argsort(score_ranks(scores), kind="stable")
    if keep is not None:
        order = order[:max(1, math.ceil(keep * len(order)))]
    if min_score is not None:
        order = order[np.nan_to_num(np.asarray(scores)[order, 0], nan=-1.0) >= min_score]
    return order


def filter_record(scores: np.ndarray, chosen: np.ndarray, keep: float | None,
                  min_score: float | None, sources: list[str],
                  note: dict[str, Any] | None = None) -> dict[str, Any]:
    """The filter's record (``dataset.json`` extra and report ``filter``): where the pool came
    from, the rule, and the pool's and the kept pairs' scores."""
    return {"from": sources, "keep": keep, "min_score": min_score,
            "pool_pairs": int(len(scores)), "kept_pairs": int(len(chosen)),
            "threshold_miou": round(float(np.nan_to_num(scores[chosen[-1], 0], nan=-1)), 5),
            "pool_scores": summarize_scores(scores),
            "kept_scores": summarize_scores(scores[chosen]), **(note or {})}


def filtered_report(report: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The pool's report as the kept pairs' (their count, shares and TV distance are the
    writer's): with the filter's record, the kept pairs' score summary, no pool placement."""
    report["filter"] = record
    report.pop("placement", None)
    if "pair_consistency" in report:
        report["pair_consistency"] = {**report["pair_consistency"],
                                      "summary": record["kept_scores"]}
    return report


def kept_tags(index: int, scores: np.ndarray) -> dict[str, str]:
    """The GeoTIFF tags of a kept pair: its rank (``index`` + 1) and its scores."""
    return {"SATSYNTH_RANK": str(index + 1), "SATSYNTH_PAIR_MIOU": f"{scores[0]:.5f}",
            "SATSYNTH_PAIR_ACCURACY": f"{scores[1]:.5f}"}


@dataclass
class _Pool:
    """The pairs of one or more scored synthetic folders, as one pool."""

    paths: list[Path]
    stores: list[ChipStore]
    splits: list[ChipSplit]
    scores: np.ndarray  # (N, 2)
    owner: np.ndarray  # (N,) the folder of each pair
    local: np.ndarray  # (N,) its index there

    def pair(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        split = self.splits[self.owner[j]]
        return np.asarray(split.images[self.local[j]]), np.asarray(split.labels[self.local[j]])

    def tags(self, j: int) -> tuple[dict[str, str], dict[str, str]]:
        """The pair's own ``SATSYNTH_*`` GeoTIFF tags, and the label's source."""
        import rasterio

        folder, name = self.paths[self.owner[j]], f"syn_{int(self.local[j]):05d}.tif"
        for sub in ("images", "labels"):
            if not (folder / sub / name).is_file():
                raise SatSynthError("synthetic chip GeoTIFF not found", folder / sub / name)
        with rasterio.open(folder / "images" / name) as src:
            tags = {k: v for k, v in src.tags().items() if k.startswith("SATSYNTH_")}
        tags["SATSYNTH_FILTERED_FROM"] = f"{folder.name}/images/{name}"
        return tags, {"SATSYNTH_FILTERED_FROM": f"{folder.name}/labels/{name}"}


def _scored(store: ChipStore) -> np.ndarray:
    scores = store.split("train").scores
    if scores is None:
        raise SatSynthError("these pairs are not scored yet: run 'satsynth score-pairs "
                            f"{store.path} --segmenter SEG_DIR' first", store.path)
    return np.asarray(scores)


def _open_pool(paths: list[Path], scores: list[np.ndarray] | None) -> _Pool:
    """The folders' pairs and scores (``scores`` or the stored ones), checked to be one pool."""
    stores = [ChipStore(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        if (s.meta.chip_size, s.meta.bands, s.classes.names) != (
                first.meta.chip_size, first.meta.bands, first.classes.names):
            raise SatSynthError(f"cannot merge pairs of other size, bands or classes than "
                                f"{first.path}", s.path)
    splits = [s.split("train") for s in stores]
    if scores is None:
        scores = [_scored(s) for s in stores]
    elif [len(x) for x in scores] != [len(x) for x in splits]:
        raise SatSynthError("one score per pair is needed for each synthetic folder")
    for p in paths:
        for sub in ("images", "labels"):
            if not (p / f"{sub}.vrt").is_file():
                raise SatSynthError(f"{sub}.vrt not found: not a folder written by 'satsynth "
                                    f"synthesize'", p)
    return _Pool(paths, stores, splits,
                 np.concatenate([np.asarray(x, np.float32) for x in scores]),
                 np.concatenate([np.full(len(x), i) for i, x in enumerate(splits)]),
                 np.concatenate([np.arange(len(x)) for x in splits]))


def filter_pairs(synthetic: str | Path | list[str | Path], out: str | Path,
                 keep: float | None = None, min_score: float | None = None,
                 scores: list[np.ndarray] | None = None, note: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the most consistent pairs of one or more scored synthetic folders into ``out``.

    Args:
        synthetic: the scored synthetic folder(s), the pool.
        out: the synthetic folder to write: like one ``synthesize`` writes, its chips on the
            grid from the first pool's first chip, most consistent first, with the scores.
        keep, min_score: which pairs to keep (:func:`select_pairs`).
        scores: one (N, 2) array per folder, instead of the stored scores (e.g. those of
            another segmenter).
        note: added to the filter's record (``dataset.json`` extra and report).

    Returns:
        The outputs (the folder, its mosaics, style, footprints, report and preview), ``kept``,
        ``pool``, ``threshold_miou`` and ``tv_distance``.
    """
    paths = [Path(p) for p in ([synthetic] if isinstance(synthetic, (str, Path)) else synthetic)]
    if not paths:
        raise SatSynthError("no synthetic folder to filter")
    refuse_repeats(paths, "filter-pairs")
    check_output(out, "synthetic", inputs=paths)
    pool = _open_pool(paths, scores)
    chosen = select_pairs(pool.scores, keep, min_score)
    if not len(chosen):
        raise SatSynthError(f"no pair has a mIoU of at least {min_score} (best "
                            f"{np.nanmax(pool.scores[:, 0]):.3f})", paths[0])
    filt = filter_record(pool.scores, chosen, keep, min_score,
                         [str(p.resolve()) for p in paths], note)
    meta = pool.stores[0].meta
    meta.extra = {**meta.extra, "filter": filt}
    meta.sources = [{**(meta.sources[0] if meta.sources else {}), "image": "images.vrt",
                     "label": "labels.vrt", "synthetic": True}]
    transforms = chip_grid(pool.splits[0].transforms[0], len(chosen), meta.chip_size)
    report_file = paths[0] / "report.json"
    report = read_json(report_file) if report_file.is_file() else {}
    real = [c.get("real_share", 0.0) for c in report.get("classes", [])] or None
    with SyntheticStoreWriter(out, meta, len(chosen)) as w:
        for new, j in enumerate(progress.track(list(chosen), "filter-pairs", unit="pair")):
            tags, label_tags = pool.tags(j)
            w.add(*pool.pair(j), transforms[new], {**tags, **kept_tags(new, pool.scores[j])},
                  FILTERED_NOTE, label_tags)
        w.set_scores(pool.scores[chosen])
        if len(paths) == 1 and (paths[0] / SCORED_GRID).is_file():  # the pool's ends
            shutil.copyfile(paths[0] / SCORED_GRID, w.tmp / SCORED_GRID)
        tv = w.finish(filtered_report(report, filt), real)
    log.info("kept %d of %d pairs (pair mIoU >= %.3f)", len(chosen), len(pool.scores),
             filt["threshold_miou"])
    return {**w.outputs(), "footprints": str(Path(out) / "chips.gpkg"), "kept": int(len(chosen)),
            "pool": int(len(pool.scores)), "threshold_miou": filt["threshold_miou"],
            "tv_distance": tv}


def filtered_pool(pool: list[str], out: Path, seed: int, baseline_model: Path | None,
                  keep: float, device: str = "auto") -> list[str]:
    """The experiment's filtered pool for one seed: the ``keep`` fraction of the pool's pairs
    that the real-only segmenter of that seed finds most consistent, written once per seed as
    ``out/synthetic/filtered-keep<F>-seed<S>`` (rewritten when that segmenter changed)."""
    from satsynth.checkpoint import model_fingerprint

    folder = out / "synthetic" / f"filtered-keep{keep:g}-seed{seed}"
    cached = None
    if (folder / "dataset.json").is_file():
        cached = ChipStore(folder).meta.extra.get("filter", {})
    fp = model_fingerprint(baseline_model, "quick", length=16) \
        if baseline_model is not None else None
    pool_ids = [str(Path(p).resolve()) for p in pool]
    if cached is None or cached.get("from") != pool_ids or (
            fp is not None and cached.get("scored_by") != fp):
        if baseline_model is None:
            raise SatSynthError(f"the filtered variants need the real-only segmenter of seed "
                                f"{seed} to score the pool, and this experiment folder no "
                                f"longer holds it (R=0 models are kept only while an "
                                f"experiment runs): run the filtered variants with a new --out, "
                                f"or from the start with --keep-models", out)
        model, cfg, dev = store_scorer(baseline_model, ChipStore(pool[0]), device)
        scores = [pair_scores(model, ChipStore(p).split("train"), cfg.normalization,
                              cfg.num_classes, 32, dev) for p in pool]
        filter_pairs(pool, folder, keep=keep, scores=scores,
                     note={"scored_by": fp, "segmenter": str(baseline_model)})
    return [str(folder)]


__all__ = ["FILTERED_NOTE", "filter_pairs", "filter_record", "filtered_pool", "filtered_report",
           "kept_tags", "select_pairs"]
