"""Scored synthesis (``synthesize --score-with SEG_DIR [--keep F | --min-score S]``): sample,
score every pair with a segmenter trained on real chips, keep the most consistent, and write the
synthetic folder once.

The generator floor samples the pairs (:func:`~satsynth.generator.sample.sample_pairs`) into a
scratch chip store beside the output (arrays only, removed afterwards); the segmenter floor scores
them (and FID/KID with a local weights file); then the one synthetic-folder writer
(:class:`~satsynth.generator.synthetic_store.SyntheticStoreWriter`) writes every pair with its
scores, or only the kept pairs in rank order, each chip once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.store import ChipStore, ChipStoreWriter
from satsynth.errors import SatSynthError
from satsynth.generator.sample import SynthesisRun, load_synthesis, sample_pairs
from satsynth.generator.synthetic_store import SyntheticStoreWriter, chip_grid
from satsynth.io import temp_dir
from satsynth.segmenter.consistency import load_scorer, pair_scores, scoring_record
from satsynth.segmenter.filtering import (
    FILTERED_NOTE,
    filter_record,
    filtered_report,
    kept_tags,
    select_pairs,
)
from satsynth.segmenter.pair_plots import SCORED_GRID, plot_pair_ends
from satsynth.segmenter.realism import fid_kid, real_store
from satsynth.segmenter.scoring import scored_outputs


@dataclass
class _Scoring:
    """The segmenter's verdict on a sampled pool."""

    model: Any
    cfg: Any
    device: Any
    scores: np.ndarray | None = None  # (N, 2)
    record: dict[str, Any] = field(default_factory=dict)  # report's pair_consistency
    realism: dict[str, Any] | None = None  # FID/KID
    chosen: np.ndarray | None = None  # the pairs written, in order
    filter: dict[str, Any] | None = None  # the filter's record (with keep / min_score)


def _sample_pool(run: SynthesisRun, out: Path, scratch: Path) -> tuple[ChipStore, Any]:
    """Every pair of the run in a chip store in ``scratch`` (no GeoTIFFs), and what sampling
    measured."""
    transforms = chip_grid(run.placement()[0], run.count, run.geo.chip_size)
    with ChipStoreWriter(scratch / "pool", run.meta(), {"train": run.count},
                         write_index=False) as pool:
        stats = sample_pairs(run, out, lambda i, image, label: pool.add(
            "train", image, label, transforms[i]))
    return ChipStore(scratch / "pool"), stats


def _score_pool(sc: _Scoring, pool: ChipStore, seg: Path, keep: float | None,
                min_score: float | None, fid_weights: str | Path | None) -> None:
    """Score every pair of ``pool`` (and FID/KID), and choose the pairs to write."""
    if fid_weights is not None:
        sc.realism = fid_kid(pool, real_store(None, sc.cfg, seg), weights=fid_weights,
                             device=sc.device)
    sc.scores = pair_scores(sc.model, pool.split("train"), sc.cfg.normalization,
                            sc.cfg.num_classes, 32, sc.device)
    sc.record = scoring_record(seg, sc.cfg, sc.scores)
    if keep is None and min_score is None:
        sc.chosen = np.arange(len(sc.scores))
        return
    sc.chosen = select_pairs(sc.scores, keep, min_score)
    if not len(sc.chosen):
        raise SatSynthError(f"no pair has a mIoU of at least {min_score} (best "
                            f"{np.nanmax(sc.scores[:, 0]):.3f})", seg)
    sc.filter = filter_record(sc.scores, sc.chosen, keep, min_score, [], None)


def _write_folder(run: SynthesisRun, out: Path, stats: Any, pool: ChipStore, sc: _Scoring
                  ) -> float | None:
    """The synthetic folder of the chosen pairs, written once; returns its TV distance."""
    meta, report = run.meta(), run.report(stats)
    meta.extra["pair_scores"] = report["pair_consistency"] = sc.record
    if sc.realism is not None:
        meta.extra["realism"] = report["realism"] = sc.realism
    if sc.filter is not None:
        meta.extra["filter"] = sc.filter
        filtered_report(report, sc.filter)
    chips = pool.split("train")
    transforms = chip_grid(run.placement()[0], len(sc.chosen), run.geo.chip_size)
    with SyntheticStoreWriter(out, meta, len(sc.chosen), run.tags()) as w:
        for new, j in enumerate(sc.chosen):
            pair = np.asarray(chips.images[j]), np.asarray(chips.labels[j])
            if sc.filter is None:
                w.add(*pair, transforms[new])
                continue
            w.add(*pair, transforms[new], {
                **kept_tags(new, sc.scores[j]),
                "SATSYNTH_FILTERED_FROM": f"pair {int(j)} of the {run.count} sampled"},
                FILTERED_NOTE)
        w.set_scores(sc.scores[sc.chosen])
        plot_pair_ends(sc.model, sc.cfg.normalization, chips, sc.scores, meta.normalizer,
                       meta.classes, w.tmp / SCORED_GRID, sc.device)
        return w.finish(report, run.real_shares())


def scored_synthesis(model_dir: str | Path, count: int, out: str | Path,
                     segmenter: str | Path, keep: float | None = None,
                     min_score: float | None = None, fid_weights: str | Path | None = None,
                     **options: Any) -> dict[str, Any]:
    """Synthesize pairs scored by a real-trained segmenter, keeping all or the most consistent.

    Args:
        model_dir, count, out: as :func:`~satsynth.generator.sample.synthesize` takes them.
        segmenter: a segmenter folder trained on real chips; checked against the pairs the
            generator (and upsampler) will make before any sampling.
        keep, min_score: keep only the most consistent pairs
            (:func:`~satsynth.segmenter.filtering.select_pairs`); neither: keep every pair.
        fid_weights: a local Inception weights file: also FID/KID against the segmenter's real
            training chips.
        options: :func:`~satsynth.generator.sample.synthesize`'s sampling options (sampler,
            steps, seed, device, batch_size, favor, upsampler).

    Returns:
        The outputs of ``synthesize`` with the scoring's (``scored_grid``: the PNG of the pool's
        most and least consistent pairs; with ``keep``/``min_score`` also ``kept``, ``pool``
        and ``threshold_miou``).
    """
    if keep is not None or min_score is not None:
        select_pairs(np.zeros((0, 2)), keep, min_score)  # option errors first
    seg, out = Path(segmenter), Path(out)
    if not (seg / "config.json").is_file():
        raise SatSynthError("segmenter folder not found (no config.json)", seg)
    run = load_synthesis(model_dir, count, out, inputs=(seg,), **options)
    sc = _Scoring(*load_scorer(seg, run.cfg.classes, run.cfg.bands, run.geo.chip_size,
                               run.model_dir, options.get("device", "auto")))
    if not run.procs.is_main:  # another process of a distributed run: its share of the batches
        sample_pairs(run, out, lambda *_: None)
        run.procs.barrier()
        return {"synthetic": str(out), "process": run.procs.rank, "processes": run.procs.world}
    with temp_dir(out, "pool") as scratch:  # the sampled pairs, until the folder is written
        pool, stats = _sample_pool(run, out, scratch)
        _score_pool(sc, pool, seg, keep, min_score, fid_weights)
        tv = _write_folder(run, out, stats, pool, sc)
    run.procs.barrier()
    outputs = {**scored_outputs(out, seg, sc.record, sc.realism),
               **SyntheticStoreWriter.outputs_of(out), "tv_distance": tv,
               "scored_grid": str(out / SCORED_GRID)}
    if sc.filter is not None:
        outputs.update(kept=int(len(sc.chosen)), pool=count,
                       threshold_miou=sc.filter["threshold_miou"])
    return outputs
