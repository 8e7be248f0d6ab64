"""Sub-commands ``synthesize``, ``experiment`` and ``demo``: the workflows that run several stages
(``synthesize`` samples with the generator and, with ``--score-with``, scores with a segmenter)."""

from __future__ import annotations

import argparse
from typing import Any

from satsynth.cli_common import add_command
from satsynth.contract import BUDGETS, SAMPLERS, ExperimentFields
from satsynth.generator.cli import add_synthesize_arguments, synthesize_options
from satsynth.segmenter.cli import add_encoder_weights, add_model_args, add_train_args
from satsynth.segmenter.scoring_cli import add_filter_args
from satsynth.workflows import demo


def _register_synthesize(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``synthesize``: the generator's options, and scoring by a segmenter."""
    s = add_command(subparsers, common, "synthesize", _synthesize,
                    help="sample new georeferenced image-mask pairs from a trained generator")
    add_synthesize_arguments(s)
    g = s.add_argument_group("pair consistency (segmenter stage)")
    g.add_argument("--score-with", metavar="SEG_DIR", default=None,
                   help="score every pair with this real-trained segmenter (as score-pairs)")
    add_filter_args(g, "; needs --score-with, and --out then holds only the kept pairs")
    g.add_argument("--fid-weights", metavar="PATH", default=None,
                   help="with --score-with: also FID/KID with this local InceptionV3 "
                        "weights file (see score-pairs)")


def _synthesize(args: argparse.Namespace) -> dict[str, Any]:
    """Sample pairs into a synthetic chip store with GeoTIFF chips beside the source extent, VRT
    mosaics, a QML style and a class-share report. With --score-with, a segmenter trained on real
    chips scores every pair (as score-pairs) and --keep / --min-score keep only the most
    consistent ones; the folder is written once."""
    from satsynth.errors import SatSynthError

    options = synthesize_options(args)
    if args.score_with is None:
        if args.keep is not None or args.min_score is not None or args.fid_weights:
            raise SatSynthError("--keep, --min-score and --fid-weights need --score-with "
                                "SEG_DIR (a segmenter trained on real chips)")
        from satsynth.generator.sample import synthesize

        return synthesize(args.model, args.count, args.out, **options)
    from satsynth.workflows.synthesis import scored_synthesis

    return scored_synthesis(args.model, args.count, args.out, args.score_with, keep=args.keep,
                            min_score=args.min_score, fid_weights=args.fid_weights, **options)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the workflow sub-commands."""
    _register_synthesize(subparsers, common)
    exp = ExperimentFields()
    p = add_command(subparsers, common, "experiment", _experiment,
                    help="does synthetic data help? mIoU vs ratio R over seeds")
    p.add_argument("dataset", help="prepared dataset folder")
    p.add_argument("--generator", metavar="MODEL_DIR", help="trained generator folder")
    p.add_argument("--upsampler", metavar="SR_DIR",
                   help="upsampler folder (train-upsampler): make the synthetic pairs through "
                        "the super-resolution cascade, the generator being its base")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in exp.ratios),
                   help="ratios R, comma separated (default %(default)s)")
    p.add_argument("--seeds", type=int, default=exp.seeds,
                   help=f"runs per ratio (default {exp.seeds})")
    p.add_argument("--out", required=True, help="experiment folder (results, cache)")
    p.add_argument("--count-per-real", type=float, default=exp.count_per_real,
                   help="synthetic pairs to make per real chip (default: the largest R)")
    p.add_argument("--minutes-per-run", type=float, default=exp.minutes_per_run,
                   help="time limit of each training run")
    p.add_argument("--sampler", choices=SAMPLERS, default=exp.sampler,
                   help="generator sampler (default: the generator's recipe's, dpm; ddpm for "
                        "--recipe paper generators)")
    p.add_argument("--steps", type=int, default=exp.steps,
                   help=f"sampler steps (default {exp.steps})")
    p.add_argument("--keep-models", action="store_true", help="keep every run's segmenter")
    p.add_argument("--budget", choices=BUDGETS, default=exp.budget,
                   help="steps (default): every run makes the optimizer steps of --epochs over "
                        "the real chips alone, so R changes the data, not the compute; epochs: "
                        "--epochs passes over real + synthetic (R>0 runs train longer); "
                        "converge: every run trains until val mIoU stops improving for "
                        "--patience validations (every --val-every steps, the same for all R)")
    p.add_argument("--variants", default=",".join(exp.variants),
                   help="how synthetic pairs are used, comma separated: mix (default), pretrain "
                        "(synthetic first, then real fine-tuning), tstr (synthetic only, at the "
                        "largest R), filtered / filtered-pretrain (as mix / pretrain on the "
                        "pairs the R=0 run of the same seed finds most consistent), mix-realbn "
                        "(as mix, batch-norm statistics re-estimated on the real chips), "
                        "mix-weighted (as mix, synthetic pixels weighted by --synthetic-weight "
                        "in the loss); each is compared with R=0 of the same seed")
    p.add_argument("--filter-keep", type=float, default=exp.filter_keep, metavar="FRACTION",
                   help=f"share of the pool the filtered variants keep (default "
                        f"{exp.filter_keep:g})")
    p.add_argument("--synthetic-weight", type=float, default=exp.synthetic_weight, metavar="W",
                   help="weight of a synthetic pixel against a real one in the loss of the "
                        f"mix-weighted variant (default {exp.synthetic_weight:g})")
    p.add_argument("--val-every", type=int, default=exp.val_every, metavar="N",
                   help="steps between validations for the steps/converge budgets (default: "
                        "one pass over the real chips)")
    add_model_args(p, exp)
    add_encoder_weights(p, exp.encoder_weights)
    add_train_args(p, exp)

    demo.register(subparsers, common)


def _experiment(args: argparse.Namespace) -> dict[str, Any]:
    """For each ratio R and seed, synthesize (cached), train a segmenter on real + R x real
    synthetic pairs and score it on the real validation chips. Resumable: finished runs are kept
    in OUT/runs.json."""
    from satsynth.workflows.experiment import run_experiment

    return run_experiment(
        args.dataset, args.generator, args.out, upsampler=args.upsampler, ratios=args.ratios, seeds=args.seeds,
        real_fraction=args.real_fraction, count_per_real=args.count_per_real, arch=args.arch,
        encoder=args.encoder, encoder_weights=args.encoder_weights, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        dice=args.dice, class_weights=args.class_weights, patience=args.patience,
        minutes_per_run=args.minutes_per_run, sampler=args.sampler, steps=args.steps,
        device=args.device, keep_models=args.keep_models, budget=args.budget,
        variants=args.variants, val_every=args.val_every, filter_keep=args.filter_keep,
        synthetic_weight=args.synthetic_weight)
