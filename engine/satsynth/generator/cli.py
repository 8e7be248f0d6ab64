"""Command line of the generator stage: ``train-generator``, ``train-upsampler`` and the options of
``synthesize``."""

from __future__ import annotations

import argparse
from typing import Any

from satsynth.cli_common import add_batch_size, add_command, add_device, add_seed
from satsynth.contract import (
    BETA_SCHEDULES,
    CONDITIONS,
    ENCODINGS,
    GENERATOR_PRESETS,
    MIXED_PRECISIONS,
    PREDICTIONS,
    RECIPES,
    SAMPLERS,
    SNR_WEIGHTINGS,
    UPSAMPLER_FACTORS,
    GeneratorTrainFields,
    SynthesizeFields,
)


def _widths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


#: recipe options shared by train-generator and train-upsampler (GeneratorTrainFields fields)
RECIPE_OPTIONS = (
    "preset", "block_widths", "encoding", "prediction", "beta_schedule", "snr_gamma",
    "snr_weighting", "steps", "minutes", "batch_size", "lr", "warmup", "ema_decay",
    "grad_accum", "mixed_precision", "class_balanced", "checkpoint_every", "resume", "seed",
    "device")


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The training options given on the command line, as the training functions take them."""
    opts = {k: getattr(args, k) for k in names}
    opts["augment"] = not args.no_augment
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        opts["snr_gamma"] = None
    elif args.snr_gamma is None:
        opts.pop("snr_gamma")
    for key in ("block_widths", "minutes", "size"):
        if key in opts and opts[key] is None:
            opts.pop(key)
    return opts


def _train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a joint image-mask diffusion model on a prepared chip store. Runs on CPU or GPU; for
    several GPUs or nodes start it with 'accelerate launch --num_processes N -m satsynth
    train-generator ...'."""
    from satsynth.generator.train import run_training

    return run_training(args.dataset, args.out,
                        **_options(args, (*RECIPE_OPTIONS, "condition", "size", "recipe")))


def _train_upsampler(args: argparse.Namespace) -> dict[str, Any]:
    """Train the cascade's super-resolution diffusion model on a prepared chip store: it learns
    pairs of BASE_SIZE x FACTOR px given the same pair at BASE_SIZE px (area-downsampled image,
    majority-class mask, upsampled bilinearly). Use it with a generator trained with --size
    BASE_SIZE on the same chips: 'satsynth synthesize GENERATOR --upsampler UPSAMPLER'. Same
    recipe options, checkpoints, --resume and Accelerate as train-generator."""
    from satsynth.generator.upsampler import run_upsampler_training

    return run_upsampler_training(args.dataset, args.out, args.base_size, args.factor,
                                  cond_noise=args.cond_noise, **_options(args, RECIPE_OPTIONS))


def _favor(text: str) -> tuple[str, float]:
    name, sep, factor = text.rpartition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS=FACTOR (e.g. Water=3), got {text!r}"
                                         ) from None


def synthesize_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options of ``synthesize``'s command line, as
    :func:`~satsynth.generator.sample.synthesize` takes them."""
    return {"sampler": args.sampler, "steps": args.steps, "seed": args.seed,
            "device": args.device, "batch_size": args.batch_size,
            "favor": dict(args.favor) if args.favor else None, "upsampler": args.upsampler}


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The training recipe's options, shared by train-generator and train-upsampler."""
    d = GeneratorTrainFields()
    # options a --recipe sets default to None here, so that only explicit ones override it
    p.add_argument("--preset", choices=GENERATOR_PRESETS, default=None,
                   help="UNet size: tiny (~1 M parameters, CPU demos), small, base (GPU, paper "
                        f"scale) (default {d.preset}; base with --recipe paper)")
    p.add_argument("--block-widths", type=_widths, default=None,
                   help="explicit UNet level widths, e.g. 32,64,64 (overrides the preset's)")
    p.add_argument("--encoding", choices=ENCODINGS, default=None,
                   help="label encoding: analog bits (ceil(log2 K) channels) or one-hot "
                        f"(default {d.encoding})")
    p.add_argument("--prediction", choices=PREDICTIONS, default=None,
                   help=f"training target (default {d.prediction}; epsilon with --recipe paper)")
    p.add_argument("--beta-schedule", choices=BETA_SCHEDULES, default=None,
                   help=f"noise schedule (default {d.beta_schedule}; linear with --recipe paper)")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help=f"min-SNR-gamma loss weighting; 0 turns it off (default {d.snr_gamma}; "
                        "off with --recipe paper)")
    p.add_argument("--snr-weighting", choices=SNR_WEIGHTINGS,
                   default=d.snr_weighting,
                   help="min-snr: clean-sample loss weight min(SNR, gamma); min-snr+1: "
                        "min(SNR+1, gamma), full weight at the highest noise levels "
                        "(v_prediction only); auto: min-snr+1 for v_prediction, min-snr for "
                        "epsilon (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="optimizer steps (default %(default)s)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: stop cleanly and checkpoint when reached (the "
                        "learning-rate schedule follows the budget)")
    add_batch_size(p, d.batch_size, "chips per step and process")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="learning-rate warm-up steps (default %(default)s)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help="maximum EMA decay of the sampling weights (default %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="gradient accumulation steps (default %(default)s)")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, default=d.mixed_precision,
                   help="autocast format: auto (default) = bf16 on CPUs with AVX512-BF16 or AMX "
                        "and GPUs with bf16, fp16 on other tensor-core GPUs, else float32; "
                        "weights stay float32")
    p.add_argument("--class-balanced", action="store_true",
                   help="draw chips with rare classes more often")
    p.add_argument("--no-augment", action="store_true",
                   help="turn off random flips and 90-degree rotations")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="write a checkpoint every N steps (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out")
    add_seed(p, d.seed)
    add_device(p, d.device)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``train-generator`` and ``train-upsampler`` (``synthesize``'s options:
    :func:`add_synthesize_arguments`)."""
    d = GeneratorTrainFields()
    p = add_command(
        subparsers, common, "train-generator", _train,
        help="learn the joint distribution of image chips and label masks (diffusion model)")
    p.add_argument("dataset", help="chip store folder made by 'satsynth prepare'")
    p.add_argument("--out", required=True, help="model folder to write (checkpoints go here)")
    p.add_argument("--recipe", choices=RECIPES, default=d.recipe,
                   help="paper: SatSynth (CVPR 2024) as published, in one switch: analog bits, "
                        "epsilon prediction, linear beta schedule, no SNR loss weighting, no "
                        "class conditioning, the base UNet, on 128 px chips (other sizes are "
                        "refused), and synthesize samples it with DDPM by default; options given "
                        "explicitly still win (default %(default)s)")
    _add_recipe_arguments(p)
    p.add_argument("--condition", choices=CONDITIONS, default=None,
                   help="none: the paper's unconditional model; class-shares: condition on each "
                        "chip's class pixel shares, drawn from the real training chips when "
                        "sampling, which keeps the synthetic class mix close to the real one "
                        f"(default {d.condition}; none with --recipe paper)")
    p.add_argument("--size", type=int, default=None,
                   help="train at this chip size in px, on the chips area-downsampled (masks: "
                        "the majority class), e.g. 32 on 64 or 128 px chips: the base of a "
                        "super-resolution cascade (see train-upsampler); default: the chips' size")

    u = add_command(subparsers, common, "train-upsampler", _train_upsampler,
                    help="learn to add detail to low-resolution image-mask pairs (the "
                         "super-resolution stage of the cascade)")
    u.add_argument("dataset", help="chip store folder made by 'satsynth prepare'")
    u.add_argument("--out", required=True, help="upsampler folder to write (checkpoints go here)")
    u.add_argument("--base-size", type=int, required=True,
                   help="the low-resolution pair size in px (the generator's --size)")
    u.add_argument("--factor", type=int, choices=UPSAMPLER_FACTORS, default=UPSAMPLER_FACTORS[0],
                   help="upsampling factor; the output is BASE_SIZE x FACTOR px, which must "
                        "divide the chips' size (default %(default)s)")
    u.add_argument("--cond-noise", type=float, default=0.0, metavar="SIGMA",
                   help="conditioning augmentation: add Gaussian noise of a level drawn per chip "
                        "from U(0, SIGMA) to the low-resolution image in training, so that the "
                        "upsampler does not copy the base's noise (e.g. 0.2; default 0: off)")
    _add_recipe_arguments(u)


def add_synthesize_arguments(s: argparse.ArgumentParser) -> None:
    """The generator's options of ``synthesize`` (the sub-command is registered by the workflows
    floor, which adds the scoring options: :mod:`satsynth.workflows.cli`)."""
    syn = SynthesizeFields()
    s.add_argument("model", help="generator folder made by 'satsynth train-generator'")
    s.add_argument("--count", type=int, required=True, help="number of pairs to sample")
    s.add_argument("--out", required=True, help="output folder (replaced when done)")
    s.add_argument("--sampler", choices=SAMPLERS, default=syn.sampler,
                   help="ddpm (all 1000 steps, reference), ddim, or dpm (DPM-Solver++) "
                        "(default: the model's recipe's, dpm; ddpm for --recipe paper models)")
    s.add_argument("--steps", type=int, default=syn.steps,
                   help="sampling steps for ddim/dpm (default %(default)s)")
    add_batch_size(s, syn.batch_size, "pairs per batch")
    s.add_argument("--favor", type=_favor, action="append", metavar="CLASS=FACTOR",
                   help="draw chips made of CLASS (name or id) FACTOR times as often, e.g. "
                        "Water=3 or Road=0.5; repeatable (generators trained with --condition "
                        "class-shares)")
    s.add_argument("--upsampler", default=None,
                   help="upsampler folder made by 'satsynth train-upsampler': sample each pair "
                        "at the generator's size, then at the upsampler's (the size written)")
    add_seed(s, syn.seed)
    add_device(s, syn.device)
