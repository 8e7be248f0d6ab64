"""Sub-commands ``score-pairs`` and ``filter-pairs`` (``synthesize --score-with``, which samples and
scores, is a workflow: :mod:`satsynth.workflows.cli` adds it with :func:`add_filter_args`)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from satsynth.cli_common import add_batch_size, add_command, add_device


def add_filter_args(p: Any, note: str = "") -> None:
    """``--keep`` and ``--min-score``: which scored pairs to keep (``note`` ends their help)."""
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
    """Add ``score-pairs`` and ``filter-pairs``."""
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
    add_filter_args(p)


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

