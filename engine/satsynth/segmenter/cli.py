"""Sub-commands ``train-segmenter`` (and, from :mod:`~satsynth.segmenter.scoring_cli`,
``score-pairs`` and ``filter-pairs``)."""

from __future__ import annotations

import argparse
from typing import Any

from satsynth.cli_common import add_batch_size, add_command, add_device, add_seed
from satsynth.contract import (
    ARCHITECTURES,
    BATCH_NORM_STATS,
    CLASS_WEIGHTS,
    ENCODERS,
    LR_SCHEDULES,
    MIXED_PRECISIONS,
    SYNTHETIC_MODES,
    TINY_ARCH,
    TINY_ENCODER,
    ExperimentFields,
    SegmenterTrainFields,
)

#: Options shared by train-segmenter and experiment: the fields both declarations have.
_Declared = SegmenterTrainFields | ExperimentFields


def add_model_args(p: argparse.ArgumentParser, d: _Declared) -> None:
    """The model and run options (architecture, encoder, epochs, batch size, device)."""
    p.add_argument("--arch", default=d.arch, choices=ARCHITECTURES,
                   help=f"segmentation architecture (default {d.arch}, as in the paper; "
                        f"'{TINY_ARCH}' is a small conv net for quick CPU checks, its --encoder "
                        f"reads e.g. {TINY_ENCODER})")
    p.add_argument("--encoder", default=d.encoder,
                   help=f"encoder backbone, e.g. {', '.join(ENCODERS)} (default {d.encoder})")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"maximum epochs (default {d.epochs})")
    add_batch_size(p, d.batch_size)
    add_device(p, d.device)


def add_train_args(p: argparse.ArgumentParser, d: _Declared) -> None:
    """The optimisation options (learning rate, losses, patience, real fraction)."""
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate ({d.lr:g})")
    p.add_argument("--dice", action="store_true", help="add a Dice loss to the cross-entropy")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=d.class_weights,
                   help="auto: weight rare classes up (1/sqrt of their pixel share)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation mIoU "
                        f"(0 = never; default {d.patience})")
    p.add_argument("--real-fraction", type=float, default=d.real_fraction,
                   help="train on this fraction of the real training chips (low-data study)")


def add_encoder_weights(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--encoder-weights``: random, a name smp knows, TorchGeo weights or a local file."""
    p.add_argument("--encoder-weights", metavar="WEIGHTS", default=default,
                   help="start the encoder from pretrained weights: a name smp knows for the "
                        "encoder (imagenet, ...), torchgeo:NAME (TorchGeo's RGB ResNet weights, "
                        "e.g. torchgeo:ResNet50_Weights.FMOW_RGB_GASSL; pip install "
                        "'satsynth[torchgeo]'), or a local .safetensors/.pth file. Named "
                        "weights are read from their cache (downloaded once: satsynth "
                        "fetch-weights); the model then standardizes its input as they expect. "
                        "Default: random weights")


def _add_fetch_weights(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(subparsers, common, "fetch-weights", _fetch_weights,
                    help="download pretrained encoder weights into their cache (while online), "
                         "so that training from them works offline")
    p.add_argument("weights", help="imagenet (or another name smp knows for the encoder) or "
                                   "torchgeo:NAME")
    p.add_argument("--encoder", default=SegmenterTrainFields.encoder,
                   help=f"encoder backbone (default {SegmenterTrainFields.encoder})")


def _fetch_weights(args: argparse.Namespace) -> dict[str, Any]:
    """Fetch named encoder weights into the cache training reads them from."""
    from satsynth.segmenter.weights import fetch_weights

    return fetch_weights(args.weights, args.encoder)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the segmenter sub-commands."""
    seg = SegmenterTrainFields()
    p = add_command(subparsers, common, "train-segmenter", _train,
                    help="train a segmenter on real (+ synthetic) chips")
    p.add_argument("dataset", help="prepared dataset folder (satsynth prepare)")
    p.add_argument("--out", required=True, help="segmenter model folder to write")
    p.add_argument("--synthetic", action="append", metavar="SYN_DIR",
                   help="synthetic chip folder (satsynth synthesize); may be repeated")
    p.add_argument("--ratio", type=float, default=None,
                   help="synthetic pairs per real pair R (|D'| = R |D|; default 1 with "
                        "--synthetic, else 0)")
    add_model_args(p, seg)
    add_encoder_weights(p, seg.encoder_weights)
    add_train_args(p, seg)
    p.add_argument("--max-steps", type=int, default=seg.max_steps,
                   help="train for this many optimizer steps in total instead of --epochs")
    p.add_argument("--minutes", type=float, default=seg.minutes,
                   help="time budget in minutes: the learning rate anneals by then and training "
                        "stops there")
    p.add_argument("--synthetic-mode", choices=SYNTHETIC_MODES, default=seg.synthetic_mode,
                   help="mix (default): synthetic pairs mixed into every epoch; pretrain: first "
                        "the synthetic pairs, then fine-tuning on the real chips with the whole "
                        "real-only budget (pre-training gets R times it)")
    p.add_argument("--synthetic-only", action="store_true",
                   help="train on the synthetic pairs alone (R |D| of them) and validate on the "
                        "real chips: train-on-synthetic, test-on-real (TSTR)")
    p.add_argument("--val-every", type=int, default=seg.val_every, metavar="N",
                   help="validate every N optimizer steps (default: after every epoch)")
    p.add_argument("--patience-steps", type=int, default=seg.patience_steps, metavar="P",
                   help="with --val-every: stop after P optimizer steps without a better "
                        "validation mIoU (0 = never)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=seg.lr_schedule,
                   help="after the 5%% warm-up: cosine to 0 by the end of the budget (default) "
                        "or constant")
    p.add_argument("--synthetic-on-top", action="store_true",
                   help="mix: every batch holds --batch-size real chips (those of the real-only "
                        "run of this seed) plus R x --batch-size synthetic ones on top, so every "
                        "R sees the same real chips at every step")
    p.add_argument("--anneal-steps", type=int, default=seg.anneal_steps, metavar="N",
                   help="after training, N more steps with the learning rate annealed to 0 and "
                        "the weights averaged over them; the average is the model kept")
    p.add_argument("--synthetic-weight", type=float, default=seg.synthetic_weight, metavar="W",
                   help="mix: every pixel of a synthetic chip counts W times a real chip's in "
                        f"the loss (>= 0; 0: synthetic chips give no gradient; default "
                        f"{seg.synthetic_weight:g})")
    p.add_argument("--batch-norm-stats", choices=BATCH_NORM_STATS, default=seg.batch_norm_stats,
                   help="with synthetic chips: all (default) keeps the batch-norm statistics of "
                        "the training batches; real re-estimates them on the real training "
                        "chips before every validation, so the model kept has them")
    add_seed(p, seg.seed)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, default=seg.mixed_precision,
                   help="autocast format: auto (default) = bf16 on CPUs with AVX512-BF16 or AMX "
                        "and GPUs with bf16, fp16 on other tensor-core GPUs, else float32; "
                        "weights stay float32")

    from satsynth.segmenter import scoring_cli

    scoring_cli.register(subparsers, common)  # score-pairs, filter-pairs
    _add_fetch_weights(subparsers, common)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a segmentation model on a prepared dataset, optionally mixing in R synthetic pairs
    per real pair. Validation uses real chips only."""
    from satsynth.segmenter.train import train_segmenter

    return train_segmenter(
        args.dataset, args.out, synthetic=args.synthetic, ratio=args.ratio, arch=args.arch,
        encoder=args.encoder, encoder_weights=args.encoder_weights, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, dice=args.dice,
        class_weights=args.class_weights, patience=args.patience,
        real_fraction=args.real_fraction, minutes=args.minutes, seed=args.seed,
        device=args.device, mixed_precision=args.mixed_precision,
        synthetic_mode=args.synthetic_mode, synthetic_only=args.synthetic_only,
        val_every=args.val_every, patience_steps=args.patience_steps,
        lr_schedule=args.lr_schedule, synthetic_on_top=args.synthetic_on_top,
        anneal_steps=args.anneal_steps, synthetic_weight=args.synthetic_weight,
        batch_norm_stats=args.batch_norm_stats)
