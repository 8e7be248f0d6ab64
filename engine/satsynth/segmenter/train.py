"""Training a segmenter on real chips plus R |D| synthetic pairs, under Accelerate.

Cross-entropy with the ignore index (optionally + Dice, optionally class-weighted), dihedral and
mild photometric augmentation, AdamW with warm-up and a cosine schedule laid over the run's budget
(steps or wall time: :mod:`satsynth.segmenter.schedule`), early stopping on the validation mIoU
(real chips only; validated every epoch or every N optimizer steps), mixed precision on GPU.
Synthetic pairs are mixed in (``mix``; ``synthetic_on_top``: on top of the real-only run's real
batches), trained on first and then fine-tuned away from (``pretrain``: batch norm re-estimated
on the real chips at the switch, selection in the fine-tuning only), or trained on alone
(``synthetic_only``: train on synthetic, test on real). The weights of the best validation are
saved, or with ``anneal_steps`` the average of the weights over a final anneal of the learning
rate to 0. The dataset's ``test`` split is never opened here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.checkpoint import check_finite_loss, save_model_dir
from satsynth.contract import (
    ARCHITECTURES,
    BATCH_NORM_STATS,
    CLASS_WEIGHTS,
    EVENT_PROGRESS,
    LR_SCHEDULES,
    MIXED_PRECISIONS,
    SYNTHETIC_MODES,
    SegmenterTrainFields,
)
from satsynth.data.classes import IGNORE_INDEX
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.segmenter.mixing import (
    PairedOrder,
    TrainingMix,
    build_mix,
    on_top_batches,
    open_synthetic,
    order_batches,
)
from satsynth.segmenter.model import (
    SegmenterConfig,
    build_segmenter,
    check_chip_size,
    forward_logits,
)

log = logging.getLogger("satsynth")

#: The clock of time budgets (a test can replace it).
_now = time.monotonic
#: The name of the end-of-training phase of ``anneal_steps`` (in the history and the phases).
ANNEAL_PHASE = "anneal"


class SegmenterTrainOptions(SegmenterTrainFields):
    """Options of one segmenter training run (the CLI flags of ``train-segmenter``), declared
    with their defaults in :class:`satsynth.contract.SegmenterTrainFields`."""

    def check(self) -> None:
        """Raise a clear error for impossible values."""
        if self.arch.lower() not in ARCHITECTURES:
            raise SatSynthError(f"unknown architecture {self.arch!r}; choose from "
                                f"{', '.join(ARCHITECTURES)}")
        if self.epochs < 1:
            raise SatSynthError(f"--epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SatSynthError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 2:
            raise SatSynthError(f"--batch-size must be >= 2 (batch norm), got {self.batch_size}")
        if not self.lr > 0:
            raise SatSynthError(f"--lr must be > 0, got {self.lr}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise SatSynthError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise SatSynthError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}")
        if self.minutes is not None and not self.minutes > 0:
            raise SatSynthError(f"--minutes must be > 0, got {self.minutes}")
        if not 0 < self.real_fraction <= 1:
            raise SatSynthError(f"--real-fraction must be in (0, 1], got {self.real_fraction} "
                                "(to train on synthetic pairs only use --synthetic-only)")
        if self.synthetic_mode not in SYNTHETIC_MODES:
            raise SatSynthError(f"--synthetic-mode must be one of {', '.join(SYNTHETIC_MODES)}, "
                                f"got {self.synthetic_mode!r}")
        if self.val_every is not None and self.val_every < 1:
            raise SatSynthError(f"--val-every must be >= 1 step, got {self.val_every}")
        if self.patience_steps is not None and self.patience_steps < 0:
            raise SatSynthError(f"--patience-steps must be >= 0, got {self.patience_steps}")
        if self.patience_steps and not self.val_every:
            raise SatSynthError("--patience-steps counts optimizer steps between validations: "
                                "give --val-every N too")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SatSynthError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.anneal_steps is not None and self.anneal_steps < 1:
            raise SatSynthError(f"--anneal-steps must be >= 1, got {self.anneal_steps}")
        self._check_synthetic_remedies()

    def _check_synthetic_remedies(self) -> None:
        """``synthetic_weight`` and ``batch_norm_stats``: a clear error for impossible values."""
        w = self.synthetic_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or w < 0:
            raise SatSynthError(f"--synthetic-weight must be a number >= 0, got {w!r}")
        if w != 1 and (self.synthetic_only or self.synthetic_mode != "mix"):
            raise SatSynthError("--synthetic-weight weighs synthetic chips against the real ones "
                                "of a mixed batch: it needs --synthetic-mode mix, without "
                                "--synthetic-only")
        if self.batch_norm_stats not in BATCH_NORM_STATS:
            raise SatSynthError(f"--batch-norm-stats must be one of "
                                f"{', '.join(BATCH_NORM_STATS)}, got {self.batch_norm_stats!r}")
        if self.batch_norm_stats == "real" and self.synthetic_only:
            raise SatSynthError("--batch-norm-stats real re-estimates batch norm on the real "
                                "training chips, which --synthetic-only does not train on")


@dataclass
class EpochRecord:
    """What happened in one epoch."""

    epoch: int
    steps: int
    loss: float
    val_miou: float
    val_accuracy: float
    seconds: float
    lr: float
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# data pipeline


class BatchPipeline:
    """Turns rows of a :class:`TrainingMix` into augmented, normalized tensors."""

    def __init__(self, mix: TrainingMix, normalizer: Any, augment: bool, seed: int) -> None:
        import torch

        self.mix = mix
        self.normalizer = normalizer
        self.augment = augment
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, rows: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """Images, labels and the synthetic flag (B,) of the entries ``rows``, in their order."""
        import torch

        from satsynth.data.augment import random_dihedral_batch

        images, labels, synthetic = self.mix.read(rows)
        x = torch.from_numpy(self.normalizer.to_model(images))
        y = torch.from_numpy(labels).long()
        if self.augment:  # per chip: the batch keeps its order
            x, y = random_dihedral_batch(x, y, generator=self.gen)
            x = photometric(x, self.gen)
        return x, y, synthetic


def photometric(x: Any, gen: Any, brightness: float = 0.1, contrast: float = 0.1) -> Any:
    """Mild per-chip brightness and contrast jitter on [-1, 1] images (same for all bands)."""
    import torch

    n = x.shape[0]
    b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * brightness
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * contrast
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean + b).clamp_(-1, 1)


def class_weights_from_store(store: ChipStore) -> list[float]:
    """Weights ~ 1/sqrt(class share) of the real training pixels, mean 1, clipped to [0.1, 10]."""
    share = store.meta.class_shares("train")
    w = np.ones_like(share)
    present = share > 0
    if present.any():
        w[present] = 1.0 / np.sqrt(share[present])
        w[present] /= w[present].mean()
    return np.clip(w, 0.1, 10.0).round(4).tolist()


# --------------------------------------------------------------------------------------------
# model helpers


def make_loss(num_classes: int, dice: bool, weights: list[float] | None, device: Any,
              synthetic_weight: float = 1.0) -> Any:
    """Cross-entropy over labeled pixels (+ multiclass Dice when asked).

    The loss takes ``(logits, target, synthetic=None)``; with a ``synthetic_weight`` W other
    than 1 and a flag per chip ``synthetic`` (B,) that marks some chips, every pixel of a
    synthetic chip counts W times a real chip's (:func:`chip_weighted_loss`). Otherwise (W = 1,
    no synthetic chip in the batch) it is the plain loss, computed as it always was."""
    import torch

    w = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX)
    dice_loss = None
    if dice:
        from segmentation_models_pytorch.losses import DiceLoss

        dice_loss = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)

    def loss_fn(logits: Any, target: Any, synthetic: Any = None) -> Any:
        if synthetic_weight != 1 and synthetic is not None and bool(synthetic.any()):
            return chip_weighted_loss(logits.float(), target, synthetic, synthetic_weight, w,
                                      dice_loss)
        loss = ce(logits.float(), target)
        if dice_loss is not None:
            loss = loss + dice_loss(logits.float(), target)
        return loss

    return loss_fn


def chip_weighted_loss(logits: Any, target: Any, synthetic: Any, weight: float,
                       class_weights: Any, dice_loss: Any) -> Any:
    """The loss of a batch whose synthetic chips (``synthetic``, a bool tensor (B,)) count
    ``weight`` times the real ones.

    Cross-entropy: the weighted mean over labeled pixels, each pixel weighted by its class weight
    (as ``CrossEntropyLoss``) times its chip's weight (1 real, ``weight`` synthetic). Dice, when
    on: the Dice loss of the real chips and that of the synthetic chips, averaged with weights
    n_real and ``weight`` x n_synthetic. Synthetic chips at weight 0 give no gradient; a batch
    of nothing but them gives a loss of 0."""
    import torch
    import torch.nn.functional as F

    syn = torch.as_tensor(synthetic, dtype=torch.bool, device=logits.device)
    chip = torch.where(syn, weight, 1.0).to(logits.dtype)
    per_pixel = F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX,
                                reduction="none")  # class weight x -log p; 0 where ignored
    labeled = target != IGNORE_INDEX
    pixel_w = labeled.to(logits.dtype)
    if class_weights is not None:
        pixel_w = pixel_w * class_weights[torch.where(labeled, target, 0)]
    chip = chip[:, None, None]
    den = (pixel_w * chip).sum()
    loss = (per_pixel * chip).sum() / den.clamp_min(torch.finfo(den.dtype).tiny)
    if dice_loss is not None:
        parts = [(dice_loss(logits[sel], target[sel]), float(n) * cw)
                 for sel, cw in ((~syn, 1.0), (syn, weight))
                 if (n := int(sel.sum())) and cw > 0]
        total = sum(cw for _, cw in parts)
        if total > 0:
            loss = loss + sum(d * cw for d, cw in parts) / total
    return loss


def make_accelerator(device: str, mixed_precision: str) -> Any:
    """An Accelerator on the asked device (``accelerate launch`` picks the processes)."""
    from accelerate import Accelerator

    from satsynth.device import mixed_precision_for, resolve_device

    dev = resolve_device(device)
    mp = mixed_precision_for(mixed_precision, dev)
    return Accelerator(cpu=dev.type == "cpu", mixed_precision=mp)


@contextmanager
def float32_forward(model: Any) -> Iterator[None]:
    """Within: ``model`` (prepared by Accelerate) runs its forward in float32, without the
    autocast Accelerate wraps around it for mixed-precision training, so that validation scores
    what ``evaluate`` and ``predict`` will compute with the saved float32 weights."""
    inner = getattr(model, "module", model)  # DDP keeps the patched module inside
    original = inner.__dict__.get("_original_forward")  # Accelerate's own record of it
    if original is None:
        yield
        return
    patched = inner.forward
    inner.forward = original
    try:
        yield
    finally:
        inner.forward = patched


# --------------------------------------------------------------------------------------------
# budgets and the end of training


def phase_budgets(phases: list[tuple[str, int, int]], max_steps: int | None, epochs: int,
                  steps_per_epoch: Any, on_top: bool = False) -> tuple[list[int], list[float]]:
    """The planned optimizer steps of each phase (name, real chips, synthetic chips) and its
    share of ``--minutes``.

    One phase (mix, synthetic-only): ``max_steps``, or ``epochs`` passes over its chips (over
    the real chips when the synthetic ones come on top of them). Pretrain: fine-tuning gets the
    whole budget of the real-only run (``max_steps``, or ``epochs`` passes over the real chips,
    and all of ``--minutes``) and pre-training as many passes over the synthetic chips (R x
    ``max_steps``, R x ``--minutes``), so a pretrain run costs (1 + R) real-only runs."""
    if len(phases) == 1:
        _, n_real, n_syn = phases[0]
        n = n_real if on_top else n_real + n_syn
        return [int(max_steps) if max_steps else epochs * steps_per_epoch(n)], [1.0]
    (_, _, n_syn), (_, n_real, _) = phases
    if max_steps:
        return [max(1, int(round(max_steps * n_syn / n_real))), int(max_steps)], \
            [n_syn / n_real, 1.0]
    return [epochs * steps_per_epoch(n_syn), epochs * steps_per_epoch(n_real)], \
        [n_syn / n_real, 1.0]


def reestimate_batch_norm(model: Any, mix: TrainingMix, rows: np.ndarray, normalizer: Any,
                          batch_size: int, device: Any) -> None:
    """Batch-norm running statistics re-estimated on the chips of ``rows`` (entries of ``mix``,
    without augmentation): their average over one pass (``torch.optim.swa_utils.update_bn``),
    replacing what the synthetic pre-training left before fine-tuning on real chips."""
    import torch
    from torch.optim.swa_utils import update_bn

    batches = (torch.from_numpy(normalizer.to_model(mix.read(rows[i:i + batch_size])[0]))
               for i in range(0, len(rows), batch_size) if len(rows[i:i + batch_size]) > 1)
    update_bn(batches, model, device)


class WeightAverage:
    """An equal average of a model's weights and batch-norm statistics
    (``torch.optim.swa_utils.AveragedModel``), updated after every step of an optimizer from
    now on; ``model.module`` holds it, :meth:`remove` stops the updates."""

    def __init__(self, optimizer: Any, module: Any) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.model = AveragedModel(module, use_buffers=True)
        self._hook = optimizer.register_step_post_hook(
            lambda *_: self.model.update_parameters(module))

    def remove(self) -> None:
        """Stop averaging."""
        self._hook.remove()


def average_weights(optimizer: Any, module: Any) -> WeightAverage:
    """Start averaging ``module``'s weights after every step of ``optimizer``."""
    return WeightAverage(optimizer, module)


# --------------------------------------------------------------------------------------------
# the run


def _open_real(dataset: str | Path) -> ChipStore:
    store = ChipStore(dataset)
    if store.meta.synthetic:
        log.warning("%s is a synthetic store; training on it as if it were real", store.path)
    if not store.has_split("train") or len(store.split("train")) < 2:
        raise SatSynthError("the dataset needs at least 2 training chips", store.path)
    return store


def _validation_indices(store: ChipStore, seed: int) -> tuple[str, np.ndarray | None,
                                                                np.ndarray | None]:
    """The real chips used for validation: the val split, else 10 % of train held out."""
    if store.has_split("val") and len(store.split("val")) > 0:
        return "val", None, None
    n = len(store.split("train"))
    if n < 10:
        raise SatSynthError("the dataset has no validation chips and too few training chips to "
                            "hold some out; prepare with a validation split", store.path)
    log.warning("%s has no validation chips: holding out 10%% of the training chips", store.path)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = max(1, n // 10)
    return "train", np.sort(perm[:k]), np.sort(perm[k:])


def train_segmenter(dataset: str | Path, out: str | Path, synthetic: str | Path | list[Any] | None
                    = None, ratio: float | None = None, **options: Any) -> dict[str, Any]:
    """Train a segmenter on ``dataset`` (+ R |D| chips of ``synthetic``) and save it to ``out``.

    Args:
        dataset: the real chip store (``satsynth prepare``); validation uses its ``val`` split,
            else 10 % of ``train`` held out; ``test`` is never opened.
        out: the segmenter model folder to write (config.json, model.safetensors,
            metrics.json).
        synthetic: synthetic chip store(s) to draw the R |D| synthetic chips from.
        ratio: R, synthetic chips per real training chip (default 1 with ``synthetic``, else 0).
        **options: the fields of :class:`SegmenterTrainOptions`.

    Returns:
        ``{"model": out, "metrics": out/metrics.json, "miou": best validation mIoU}``.
    """
    opts = _parse_options(options)
    out = Path(out)
    data = open_training_data(dataset, out, synthetic, ratio, opts)
    trainer = SegmenterTrainer(data, opts, dataset)
    trainer.fit()
    return trainer.save(out)


def _parse_options(options: dict[str, Any]) -> SegmenterTrainOptions:
    """The run's options from keyword arguments, checked (a clear error for impossible ones)."""
    try:
        opts = SegmenterTrainOptions(**options)
    except TypeError as exc:
        raise SatSynthError(f"bad training option: {exc}") from None
    opts.arch = opts.arch.lower()
    opts.check()
    return opts


@dataclass
class TrainingData:
    """The chips of one run: the real store, the synthetic stores, the mix of both, the
    validation chips (the ``val_split``; ``val_idx``: the training chips held out instead) and
    the way synthetic chips are used (``mode``: mix, pretrain or synthetic-only)."""

    real: ChipStore
    synthetic: list[ChipStore]
    ratio: float
    val_split: str
    val_idx: np.ndarray | None
    mix: TrainingMix
    mode: str


def open_training_data(dataset: str | Path, out: Path, synthetic: str | Path | list[Any] | None,
                       ratio: float | None, opts: SegmenterTrainOptions) -> TrainingData:
    """Check the output and open the run's chips (see :func:`train_segmenter`).

    Args:
        dataset: the real chip store.
        out: the model folder the run will write (checked, not written).
        synthetic: synthetic chip store(s), or None.
        ratio: R (None: 1 with ``synthetic``, else 0).
        opts: the run's options.

    Returns:
        The run's :class:`TrainingData`.
    """
    syn_paths = [] if synthetic is None else (
        [synthetic] if isinstance(synthetic, (str, Path)) else list(synthetic))
    check_output(out, "segmenter", inputs=[dataset, *syn_paths, opts.encoder_weights])
    real = _open_real(dataset)
    if ratio is None:
        ratio = 1.0 if syn_paths else 0.0
    if ratio > 0 and not syn_paths:
        raise SatSynthError(f"--ratio {ratio} needs synthetic chips: pass --synthetic SYN_DIR")
    if opts.synthetic_only and not ratio > 0:
        raise SatSynthError("--synthetic-only trains on synthetic pairs alone: pass --synthetic "
                            "SYN_DIR (and a --ratio above 0)")
    syn_stores = open_synthetic(syn_paths, real) if ratio > 0 else []
    if syn_paths and ratio == 0:
        log.info("--ratio 0: training on real chips only; the synthetic chips are not used")

    val_split, val_idx, train_keep = _validation_indices(real, opts.seed)
    mix = build_mix(real, syn_stores, ratio, opts.real_fraction, opts.subset_seed, opts.seed,
                    candidates=train_keep)
    if len(mix) < 2:
        raise SatSynthError("fewer than 2 training chips after --real-fraction", real.path)
    mode = "synthetic-only" if opts.synthetic_only else (
        opts.synthetic_mode if mix.n_synthetic else "mix")
    return TrainingData(real, syn_stores, ratio, val_split, val_idx, mix, mode)


@dataclass
class Phase:
    """One phase of a run: its name, the chips it trains on (the first ``real`` real entries of
    the mix, then its first ``synthetic`` synthetic ones), its planned optimizer steps and its
    share of ``--minutes``."""

    name: str
    real: int
    synthetic: int
    steps: int
    share: float


def plan_phases(mix: TrainingMix, mode: str, opts: SegmenterTrainOptions,
                steps_per_epoch: Callable[[int], int], on_top: bool) -> list[Phase]:
    """The phases of a run in ``mode`` with their budgets (:func:`phase_budgets`), plus the
    anneal of ``anneal_steps`` over the last phase's chips.

    Args:
        mix: the run's training mix.
        mode: mix, pretrain or synthetic-only.
        opts: the run's options.
        steps_per_epoch: chips -> optimizer steps of one pass over them (on this process).
        on_top: synthetic chips come on top of the real-only run's batches.

    Returns:
        The phases in training order.
    """
    phases = {"mix": [("mix", mix.n_real, mix.n_synthetic)],
              "pretrain": [("synthetic pre-training", 0, mix.n_synthetic),
                           ("real fine-tuning", mix.n_real, 0)],
              "synthetic-only": [("synthetic only", 0, mix.n_synthetic)]}[mode]
    n_train = sum(r + s_ for _, r, s_ in phases)
    if any(steps_per_epoch(r + s_) == 0 for _, r, s_ in phases):
        raise SatSynthError(f"not enough training chips ({n_train}) for one batch per process")
    phase_steps, shares = phase_budgets(phases, opts.max_steps, opts.epochs, steps_per_epoch,
                                        on_top)
    if opts.anneal_steps:  # the end of training: the last phase's chips, annealed and averaged
        phases.append((ANNEAL_PHASE, *phases[-1][1:]))
        phase_steps.append(int(opts.anneal_steps))
        shares.append(0.0)
    return [Phase(n, r, s_, t, sh)
            for (n, r, s_), t, sh in zip(phases, phase_steps, shares, strict=True)]


@dataclass
class _Window:
    """What the training steps since the last validation did."""

    t0: float
    losses: list[float] = field(default_factory=list)
    chips: int = 0
    train_s: float = 0.0


@dataclass
class _Best:
    """The kept validation: its mIoU, epoch, step, weights (on the CPU) and scores."""

    miou: float = -1.0
    epoch: int = 0
    step: int = 0
    state: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


@dataclass
class _PhaseWatch:
    """Where a phase started and its best validation so far (for the patience rules)."""

    start: int
    epoch0: int
    best_step: int
    best_epoch: int
    best_miou: float = -1.0


class SegmenterTrainer:
    """One segmenter training run under Accelerate, in the steps of a TorchGeo trainer:
    :meth:`configure_model`, :meth:`configure_optimizer`, :meth:`training_step`,
    :meth:`validation_step`, then :meth:`fit` over the phases and :meth:`save`.

    Args:
        data: the run's chips (:func:`open_training_data`).
        opts: the run's options.
        dataset: the dataset as given (named in a non-finite-loss error).
    """

    def __init__(self, data: TrainingData, opts: SegmenterTrainOptions,
                 dataset: str | Path) -> None:
        import torch

        self.data, self.opts, self.dataset = data, opts, dataset
        self.meta = data.real.meta
        torch.manual_seed(opts.seed)
        np.random.seed(opts.seed % (2**32))
        self.acc = make_accelerator(opts.device, opts.mixed_precision)
        self.device = self.acc.device
        self.configure_model()
        mix = data.mix
        self.entries = mix.entries()
        self.real_rows = np.arange(mix.n_real)
        self.syn_rows = mix.n_real + np.arange(mix.n_synthetic)
        self.on_top = opts.synthetic_on_top and data.mode == "mix" and mix.n_synthetic > 0
        # validate (and keep) models with batch norm re-estimated on the real training chips
        self.real_bn = opts.batch_norm_stats == "real" and mix.n_synthetic > 0
        self.phases = plan_phases(mix, data.mode, opts, self.steps_per_epoch, self.on_top)
        self.total = sum(p.steps for p in self.phases)
        self.seconds_budget = opts.minutes * 60 if opts.minutes else None
        self.configure_optimizer()
        self.pipeline = BatchPipeline(mix, self.meta.normalizer, opts.augment, opts.seed)
        from satsynth.segmenter.metrics import SegmentationMetrics

        self.metrics = SegmentationMetrics(self.meta.classes.num_classes, self.device)
        self.val_chips = data.real.split(data.val_split)
        self.order = PairedOrder(opts.seed)
        self.history: list[EpochRecord] = []
        self.best = _Best()
        self.step = 0
        self.epoch = 0
        self.schedule: Any = None  # the current phase's BudgetSchedule
        self.bar: Any = None

    def configure_model(self) -> None:
        """The model (``build_segmenter``) and its loss (class weights from the real chips)."""
        opts, meta = self.opts, self.meta
        self.cfg = SegmenterConfig(arch=opts.arch, encoder=opts.encoder, in_channels=meta.bands,
                                   classes=meta.classes, normalization=meta.normalizer,
                                   chip_size=meta.chip_size, crs=meta.crs,
                                   pixel_size=list(meta.pixel_size) if meta.pixel_size else None)
        self.model = build_segmenter(self.cfg, opts.encoder_weights)
        check_chip_size(self.model, meta.chip_size, opts.arch, opts.encoder)
        self.class_weights = class_weights_from_store(self.data.real) \
            if opts.class_weights == "auto" else None
        self.loss_fn = make_loss(meta.classes.num_classes, opts.dice, self.class_weights,
                                 self.device, opts.synthetic_weight)

    def configure_optimizer(self) -> None:
        """AdamW over the model's weights, both prepared by Accelerate (the schedule is made per
        phase: :meth:`fit_phase`)."""
        import torch

        opts = self.opts
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=opts.lr,
                                      weight_decay=opts.weight_decay)
        self.raw_optimizer = optimizer
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)

    def steps_per_epoch(self, n: int) -> int:
        """Optimizer steps of one pass over ``n`` chips on this process."""
        return len(order_batches(np.arange(n), self.opts.batch_size, self.acc.num_processes,
                                 self.acc.process_index))

    def phase_rows(self, n_real: int, n_syn: int) -> np.ndarray:
        """Rows of the mix's entries of a phase: its real rows first, then its synthetic ones."""
        if n_real:
            return np.concatenate([self.real_rows[:n_real], self.syn_rows[:n_syn]])
        return self.syn_rows[:n_syn]

    @property
    def n_val(self) -> int:
        """How many real chips validate the run."""
        idx = self.data.val_idx
        return len(self.val_chips) if idx is None else len(idx)

    def fit(self) -> None:
        """Train every phase in turn (the progress task counts the planned steps)."""
        opts, data = self.opts, self.data
        log.info("training %s/%s on %d real + %d synthetic chips (R=%g, %s), validating on %d "
                 "real chips, %d steps (%s) on %s", opts.arch, opts.encoder, data.mix.n_real,
                 data.mix.n_synthetic, data.ratio, data.mode, self.n_val, self.total,
                 " + ".join(f"{p.name}: {p.steps}" for p in self.phases), self.device)
        self.start = _now()
        self.window = _Window(t0=_now())
        self.stopped = "completed"
        with progress.task("train-segmenter", total=self.total, unit="step") as bar:
            self.bar = bar
            for index, phase in enumerate(self.phases):
                end = self.fit_phase(index, phase)
                if index == len(self.phases) - 1 - int(bool(opts.anneal_steps)):
                    self.stopped = end
        self.seconds = round(_now() - self.start, 1)

    def fit_phase(self, index: int, phase: Phase) -> str:
        """Train one phase until its planned steps, its time or its patience run out; returns
        why it ended. The kept model: the best validation of the last phase (the real chips'
        phase of pretrain, never the synthetic pre-training alone), or the anneal's average."""
        from satsynth.segmenter.schedule import BudgetSchedule

        opts, acc = self.opts, self.acc
        annealing = phase.name == ANNEAL_PHASE
        keep = index == len(self.phases) - 1 - int(bool(opts.anneal_steps)) \
            and not opts.anneal_steps
        rows = self.phase_rows(phase.real, phase.synthetic)
        if phase.name == "real fine-tuning":  # batch norm from the synthetic phase: re-estimated
            reestimate_batch_norm(self.model, self.data.mix,
                                  self.entries[self.phase_rows(phase.real, 0)],
                                  self.meta.normalizer, opts.batch_size, self.device)
        budget = self.seconds_budget
        self.schedule = BudgetSchedule(
            self.raw_optimizer, "cosine" if annealing else opts.lr_schedule,
            0.0 if annealing else opts.warmup_fraction, phase.steps,
            budget * phase.share if budget and phase.share else None, clock=_now)
        averager = average_weights(self.raw_optimizer, acc.unwrap_model(self.model)) \
            if annealing else None
        watch = _PhaseWatch(self.step, self.epoch, self.step, self.epoch)
        end = None
        while end is None:
            end = self.fit_epoch(phase, rows, keep, watch)
        if averager is not None:  # the kept model: the average over the anneal
            averager.remove()
            acc.unwrap_model(self.model).load_state_dict(averager.model.module.state_dict())
            self.best.miou = -1.0
            self.validation_step("average of the anneal")
        elif self.window.losses or not self.history:
            self.validation_step(phase.name, keep)
        if len(self.phases) > 1:
            log.info("%s: %s after %d steps", phase.name, end, self.step - watch.start)
        return end

    def epoch_batches(self, phase: Phase, rows: np.ndarray) -> list[np.ndarray]:
        """One epoch's batches of rows of the mix's entries (``rows``: the phase's)."""
        opts, acc = self.opts, self.acc
        if self.on_top:
            return [rows[b] for b in on_top_batches(self.order, phase.real, phase.synthetic,
                                                    opts.batch_size, acc.num_processes,
                                                    acc.process_index)]
        return order_batches(rows[self.order.epoch(phase.real, phase.synthetic)],
                             opts.batch_size, acc.num_processes, acc.process_index)

    def fit_epoch(self, phase: Phase, rows: np.ndarray, keep: bool,
                  watch: _PhaseWatch) -> str | None:
        """One pass over the phase's chips, validated every ``val_every`` steps or at its end;
        returns why the phase ended, or None to go on."""
        opts = self.opts
        annealing = phase.name == ANNEAL_PHASE
        self.epoch += 1
        self.model.train()
        for batch in self.epoch_batches(phase, rows):
            if self.training_step(batch, phase.name) >= 1.0:
                # the planned steps are done or the time is up (every process)
                return "time limit" if self.step - watch.start < phase.steps else "completed"
            if opts.val_every and self.step % opts.val_every == 0:
                self._validate_phase(phase.name, keep, watch)
                if opts.patience_steps and not annealing and \
                        self.step - watch.best_step >= opts.patience_steps:
                    return f"early stop (no better val mIoU for {opts.patience_steps} steps)"
        if not opts.val_every:
            self._validate_phase(phase.name, keep, watch)
            if opts.patience and not annealing and \
                    self.epoch - max(watch.best_epoch, watch.epoch0) >= opts.patience:
                return f"early stop (no better val mIoU for {opts.patience} epochs)"
        return None

    def _validate_phase(self, phase: str, keep: bool, watch: _PhaseWatch) -> None:
        score = self.validation_step(phase, keep)
        if score > watch.best_miou:
            watch.best_step, watch.best_epoch, watch.best_miou = self.step, self.epoch, score

    def training_step(self, rows: np.ndarray, phase: str) -> float:
        """One optimizer step on the entries ``rows``; returns the phase's progress after it
        (1: its planned steps are done or its time is up, the same on every process)."""
        import torch

        acc, device, window = self.acc, self.device, self.window
        t_step = _now()
        x, y, synthetic = self.pipeline(self.entries[rows])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with acc.autocast():
            logits = forward_logits(self.model, x)
            loss = self.loss_fn(logits, y, synthetic)
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.optimizer.step()
        p = self.schedule.progress(self.schedule.step_done + 1)
        if acc.num_processes > 1:  # one learning rate for every process
            p = float(acc.reduce(torch.tensor([p], device=device), "max").item())
        self.schedule.step(p)  # at p = 1 the learning rate is at its end
        window.losses.append(float(loss.detach()))
        check_finite_loss(window.losses[-1], self.step + 1, self.dataset, self.opts.lr)
        window.chips += len(rows)
        window.train_s += _now() - t_step
        self.step += 1
        self.bar.update(1, message=f"{phase}: epoch {self.epoch}", epoch=self.epoch,
                        loss=window.losses[-1])
        return p

    def validation_step(self, phase: str, keep: bool = True) -> float:
        """Score the model on the validation chips, record it in the history and the progress,
        and keep its weights if ``keep`` and best; returns the validation mIoU."""
        from satsynth.segmenter.evaluate import evaluate_chips

        acc, opts = self.acc, self.opts
        t_val = _now()
        self.metrics.reset()
        with self.scored_batch_norm():
            with float32_forward(self.model):
                evaluate_chips(self.model, self.val_chips, self.meta.normalizer, self.metrics,
                               opts.val_batch_size, self.device, indices=self.data.val_idx,
                               shard=(acc.num_processes, acc.process_index))
            scores = self.metrics.compute(self.meta.classes.names)
            if keep and scores["miou"] > self.best.miou:
                state = acc.unwrap_model(self.model).state_dict()
                self.best = _Best(scores["miou"], self.epoch, self.step,
                                  {n: t.detach().cpu().clone() for n, t in state.items()},
                                  scores)
        rec = self._record(phase, scores, t_val)
        self.history.append(rec)
        log.info("epoch %d, step %d (%s): loss %.4f, val mIoU %.4f, accuracy %.4f, lr %.2e",
                 self.epoch, self.step, phase, rec.loss, rec.val_miou, rec.val_accuracy, rec.lr)
        progress.emit({"event": EVENT_PROGRESS, "stage": "train-segmenter",
                       "fraction": round(self.step / self.total, 4),
                       "message": f"step {self.step}: val mIoU {rec.val_miou:.3f}",
                       "epoch": self.epoch, "val_miou": rec.val_miou, "loss": rec.loss})
        self.window = _Window(t0=_now())
        return float(scores["miou"])

    @contextmanager
    def scored_batch_norm(self) -> Iterator[None]:
        """Within: the model has the batch-norm statistics that validation scores and the kept
        model carries. With ``batch_norm_stats`` real (and synthetic chips in the mix): re-estimated
        on the run's real training chips (one pass, no augmentation, float32); on leaving, the
        training's running statistics and random state are put back, so that training goes on
        exactly as it would have. Otherwise the running statistics of training, untouched."""
        import torch

        if not self.real_bn:
            yield
            return
        inner = self.acc.unwrap_model(self.model)
        saved = {n: b.detach().clone() for n, b in inner.named_buffers()}
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), float32_forward(self.model):
                reestimate_batch_norm(inner, self.data.mix, self.entries[self.real_rows],
                                      self.meta.normalizer, self.opts.batch_size, self.device)
            yield
        finally:
            with torch.no_grad():
                for n, b in inner.named_buffers():
                    b.copy_(saved[n])

    def _record(self, phase: str, scores: dict[str, Any], t_val: float) -> EpochRecord:
        """The history's record of a validation that started at ``t_val``."""
        w = self.window
        return EpochRecord(self.epoch, len(w.losses),
                           float(np.mean(w.losses)) if w.losses else float("nan"),
                           scores["miou"], scores["overall_accuracy"], round(_now() - w.t0, 2),
                           float(self.schedule.get_last_lr()[0]),
                           {"train_seconds": round(w.train_s, 3), "chips": w.chips,
                            "chips_per_s": round(w.chips / max(w.train_s, 1e-9), 2),
                            "step": self.step, "phase": phase,
                            "val_seconds": round(_now() - t_val, 3)})

    def training_summary(self) -> dict[str, Any]:
        """The ``training`` section of the model's config.json."""
        opts, data, mix = self.opts, self.data, self.data.mix
        return {
            "options": asdict(opts), "ratio": data.ratio, "dataset": str(data.real.path),
            "synthetic_mode": data.mode, "phases": [
                {"phase": p.name, "real_chips": p.real, "synthetic_chips": p.synthetic,
                 "planned_steps": p.steps} for p in self.phases],
            "synthetic": [str(s.path) for s in data.synthetic],
            "real_chips": 0 if opts.synthetic_only else mix.n_real,
            "synthetic_chips": mix.n_synthetic, "validation_chips": int(self.n_val),
            "validation": "val split" if data.val_idx is None else "10% of train held out",
            "class_weights": self.class_weights, "best_epoch": self.best.epoch,
            "best_step": self.best.step, "epochs_run": self.epoch,
            "validations": len(self.history), "stopped": self.stopped, "steps": self.step,
            "seconds": self.seconds, "device": str(self.device),
            "synthetic_on_top": self.on_top,
            "batch_norm": "re-estimated on the real training chips before each validation"
            if self.real_bn else "running averages over the training batches",
            "kept": "average of the anneal" if opts.anneal_steps else
            "best validation" + (" of the real fine-tuning" if data.mode == "pretrain" else ""),
            "processes": self.acc.num_processes,
            "history": [asdict(h) for h in self.history],
        }

    def save(self, out: Path) -> dict[str, Any]:
        """Write the model folder (the kept weights, config.json with the training summary,
        metrics.json); returns ``{"model", "metrics", "miou"}`` as :func:`train_segmenter`."""
        import json

        acc, best, cfg, data = self.acc, self.best, self.cfg, self.data
        training = self.training_summary()
        cfg.metrics = {"split": "val" if data.val_idx is None else "train-holdout",
                       **best.metrics}
        cfg.training = training
        metrics_doc = {"miou": best.miou, "best_epoch": best.epoch, "validation": cfg.metrics,
                       "history": training["history"], "ratio": data.ratio,
                       "real_chips": training["real_chips"],
                       "synthetic_chips": data.mix.n_synthetic, "synthetic_mode": data.mode,
                       "best_step": best.step, "steps": self.step, "seconds": self.seconds,
                       "stopped": self.stopped}
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_model_dir(out, "segmenter", cfg.to_dict(), {"model": best.state},
                           extra_files={"metrics.json": json.dumps(metrics_doc, indent=2) + "\n"})
            log.info("saved %s (best val mIoU %.4f at epoch %d, %s)", out, best.miou, best.epoch,
                     self.stopped)
        acc.wait_for_everyone()
        return {"model": str(out), "metrics": str(out / "metrics.json"), "miou": float(best.miou)}


__all__ = ["SegmenterTrainOptions", "train_segmenter"]
