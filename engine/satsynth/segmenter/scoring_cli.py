"""Sub-commands ``score-pairs`` and ``filter-pairs``, and ``synthesize --score-with``.

The generator stage cannot know the segmenter (imports go downwards only), so the scoring options
of ``synthesize`` are added here, at the segmenter's floor, around the generator's own command:
``synthesize ... --score-with SEG_DIR [--keep F | --min-score S]`` samples as usual, then scores
the pairs and, when asked, keeps the most consistent ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.cli_common import add_batch_size, add_command, add_device


def _filter_args(p: Any, note: str = "") -> None:
    p.add_argument("--keep", type=float, default=None, metavar="FRACTION",
                   help="keep this fraction of the pairs, the most consistent (e.g. 0.5)" + note)
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="keep the pairs whose pair mIoU is at least S (with --keep: both)" + note)


def _fid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fid-weights", metavar="PATH", default=None,
                   help="also compute FID/KID with this local InceptionV3 weights file (the "
                        "torch-fidelity FID Inception; nothing is downloaded; needs the "
                        "'fid' extra)")
    p.add_argument("--real", metavar="DATASET", default=None,
                   help="real chips for FID/KID (default: the segmenter's training dataset)")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``score-pairs`` and ``filter-pairs``; give ``synthesize`` (when present) the scoring
    options."""
    p = add_command(
        subparsers, common, "score-pairs", _score,
        help="score each synthetic pair by how well a real-trained segmenter agrees with its mask")
    p.add_argument("synthetic", metavar="SYN_DIR", help="synthetic folder (satsynth synthesize)")
    p.set_defaults(writes_into=("synthetic",))  # updated in place: locked as an output
    p.add_argument("--segmenter", required=True, metavar="SEG_DIR",
                   help="segmenter trained on real chips (satsynth train-segmenter)")
    add_batch_size(p, 32)
    add_device(p)
    _fid_args(p)

    p = add_command(subparsers, common, "filter-pairs", _filter,
                    help="keep the most consistent synthetic pairs as a new synthetic folder")
    p.add_argument("synthetic", metavar="SYN_DIR", nargs="+", help="scored synthetic folder(s)")
    p.add_argument("--out", required=True, help="filtered synthetic folder to write")
    _filter_args(p)

    s = subparsers.choices.get("synthesize")
    if s is not None:
        g = s.add_argument_group("pair consistency (segmenter stage)")
        g.add_argument("--score-with", metavar="SEG_DIR", default=None,
                       help="score every pair with this real-trained segmenter (as score-pairs)")
        _filter_args(g, "; needs --score-with, and --out then holds only the kept pairs")
        g.add_argument("--fid-weights", metavar="PATH", default=None,
                       help="with --score-with: also FID/KID with this local InceptionV3 "
                            "weights file (see score-pairs)")
        s.set_defaults(func=_scored_synthesis(s.get_default("func")))


def _score(args: argparse.Namespace) -> dict[str, Any]:
    """Segment every synthetic image with a segmenter trained on real chips and score the pair by
    the agreement with its mask (per-pair mIoU and pixel accuracy). The scores are stored in the
    synthetic folder (train.scores.npy), as attributes of its footprints (chips.gpkg: miou,
    pixel_accuracy, rank), in report.json and as pairs_by_score.png. The folder is updated in
    place, atomically."""
    from satsynth.segmenter.scoring import score_pairs

    return score_pairs(args.synthetic, args.segmenter, device=args.device,
                       batch_size=args.batch_size, fid_weights=args.fid_weights, real=args.real)


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    """Write the most consistent pairs of scored synthetic folders (satsynth score-pairs) into a
    new synthetic folder: GeoTIFF chips laid out in rank order, VRT mosaics, footprints with the
    scores and a report; train-segmenter reads it like any synthetic folder."""
    from satsynth.segmenter.scoring import filter_pairs, select_pairs

    select_pairs(np.zeros((0, 2)), args.keep, args.min_score)  # option errors first
    return filter_pairs(args.synthetic, args.out, keep=args.keep, min_score=args.min_score)


def _scored_synthesis(synthesize: Any) -> Any:
    """``synthesize`` followed by scoring (and filtering) when --score-with is given."""

    def run(args: argparse.Namespace) -> dict[str, Any]:
        from satsynth.errors import SatSynthError
        from satsynth.segmenter.scoring import (
            SCORED_GRID,
            filter_pairs,
            score_pairs,
            select_pairs,
        )

        filtering = args.keep is not None or args.min_score is not None
        if args.score_with is None:
            if filtering or args.fid_weights:
                raise SatSynthError("--keep, --min-score and --fid-weights need --score-with "
                                    "SEG_DIR (a segmenter trained on real chips)")
            return synthesize(args)
        if filtering:
            select_pairs(np.zeros((0, 2)), args.keep, args.min_score)
        seg = Path(args.score_with)
        if not (seg / "config.json").is_file():
            raise SatSynthError("segmenter folder not found (no config.json)", seg)
        _check_scorer_first(args, seg)
        if not filtering:
            outputs = synthesize(args)
            scored = score_pairs(args.out, seg, device=args.device, fid_weights=args.fid_weights)
            return {**scored, **outputs, "scored_grid": scored["grid"]}
        from satsynth.outputs import check_output

        out = check_output(args.out, "synthetic", inputs=[args.model, seg])
        pool = out.with_name(f".{out.name}.pool-{os.getpid()}")
        args.out = str(pool)
        try:
            synthesize(args)
            scored = score_pairs(pool, seg, device=args.device, fid_weights=args.fid_weights)
            outputs = filter_pairs(pool, out, keep=args.keep, min_score=args.min_score)
        finally:
            args.out = str(out)
            shutil.rmtree(pool, ignore_errors=True)
        outputs.update({k: scored[k] for k in ("pair_miou_mean", "pair_miou_median", "fid",
                                               "kid_mean") if k in scored})
        outputs["scored_grid"] = str(out / SCORED_GRID)  # the pool's best and worst pairs
        return outputs

    return run


def _check_scorer_first(args: argparse.Namespace, seg: Path) -> None:
    """Check the scoring segmenter against the pairs the generator (and upsampler) will make,
    before any sampling: classes, bands, chip size and its weights."""
    from satsynth.checkpoint import load_config
    from satsynth.data.classes import ClassTable
    from satsynth.segmenter.scoring import load_scorer

    gen = load_config(args.model, "generator")
    size = gen.get("chip_size")
    if getattr(args, "upsampler", None):
        size = load_config(args.upsampler, "upsampler").get("chip_size", size)
    load_scorer(seg, ClassTable.from_dict(gen["classes"]), int(gen["bands"]), int(size),
                args.model, "cpu")
