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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.checkpoint import check_finite_loss, save_model_dir
from satsynth.contract import (
    ARCHITECTURES,
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

    def __call__(self, rows: np.ndarray) -> tuple[Any, Any]:
        import torch

        from satsynth.data.augment import random_dihedral_batch

        images, labels, _ = self.mix.read(rows)
        x = torch.from_numpy(self.normalizer.to_model(images))
        y = torch.from_numpy(labels).long()
        if self.augment:
            x, y = random_dihedral_batch(x, y, generator=self.gen)
            x = photometric(x, self.gen)
        return x, y


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


def make_loss(num_classes: int, dice: bool, weights: list[float] | None, device: Any) -> Any:
    """Cross-entropy over labeled pixels (+ multiclass Dice when asked)."""
    import torch

    w = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX)
    dice_loss = None
    if dice:
        from segmentation_models_pytorch.losses import DiceLoss

        dice_loss = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)

    def loss_fn(logits: Any, target: Any) -> Any:
        loss = ce(logits.float(), target)
        if dice_loss is not None:
            loss = loss + dice_loss(logits.float(), target)
        return loss

    return loss_fn


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

    ``options`` are the fields of :class:`SegmenterTrainOptions`. Returns ``{"model": out, "metrics":
    out/metrics.json, "miou": best validation mIoU}``.
    """
    import torch

    from satsynth.segmenter.evaluate import evaluate_chips
    from satsynth.segmenter.metrics import SegmentationMetrics
    from satsynth.segmenter.schedule import BudgetSchedule

    try:
        opts = SegmenterTrainOptions(**options)
    except TypeError as exc:
        raise SatSynthError(f"bad training option: {exc}") from None
    opts.arch = opts.arch.lower()
    opts.check()
    out = Path(out)
    syn_paths = [] if synthetic is None else (
        [synthetic] if isinstance(synthetic, (str, Path)) else list(synthetic))
    check_output(out, "segmenter", inputs=[dataset, *syn_paths, opts.encoder_weights])
    real = _open_real(dataset)
    meta = real.meta
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

    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % (2**32))
    acc = make_accelerator(opts.device, opts.mixed_precision)
    device = acc.device
    k = meta.classes.num_classes
    cfg = SegmenterConfig(arch=opts.arch, encoder=opts.encoder, in_channels=meta.bands,
                          classes=meta.classes, normalization=meta.normalizer,
                          chip_size=meta.chip_size, crs=meta.crs,
                          pixel_size=list(meta.pixel_size) if meta.pixel_size else None)
    model = build_segmenter(cfg, opts.encoder_weights)
    check_chip_size(model, meta.chip_size, opts.arch, opts.encoder)
    weights = class_weights_from_store(real) if opts.class_weights == "auto" else None
    loss_fn = make_loss(k, opts.dice, weights, device)

    entries = mix.entries()
    real_rows, syn_rows = np.arange(mix.n_real), mix.n_real + np.arange(mix.n_synthetic)
    # phases: (name, rows of entries, real rows, synthetic rows); real rows come first in each
    phases = {"mix": [("mix", mix.n_real, mix.n_synthetic)],
              "pretrain": [("synthetic pre-training", 0, mix.n_synthetic),
                           ("real fine-tuning", mix.n_real, 0)],
              "synthetic-only": [("synthetic only", 0, mix.n_synthetic)]}[mode]

    def phase_rows(n_r: int, n_s: int) -> np.ndarray:
        return np.concatenate([real_rows[:n_r], syn_rows[:n_s]]) if n_r else syn_rows[:n_s]

    def steps_per_epoch(n: int) -> int:
        return len(order_batches(np.arange(n), opts.batch_size, acc.num_processes,
                                 acc.process_index))

    n_train = sum(r + s_ for _, r, s_ in phases)
    if any(steps_per_epoch(r + s_) == 0 for _, r, s_ in phases):
        raise SatSynthError(f"not enough training chips ({n_train}) for one batch per process")
    on_top = opts.synthetic_on_top and mode == "mix" and mix.n_synthetic > 0
    # the budget: planned steps and time of each phase (phase_budgets)
    phase_steps, shares = phase_budgets(phases, opts.max_steps, opts.epochs, steps_per_epoch,
                                        on_top)
    if opts.anneal_steps:  # the end of training: the last phase's chips, annealed and averaged
        phases.append((ANNEAL_PHASE, *phases[-1][1:]))
        phase_steps.append(int(opts.anneal_steps))
        shares.append(0.0)
    total = sum(phase_steps)
    seconds_budget = opts.minutes * 60 if opts.minutes else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    raw_optimizer = optimizer
    model, optimizer = acc.prepare(model, optimizer)
    pipeline = BatchPipeline(mix, meta.normalizer, opts.augment, opts.seed)
    metrics = SegmentationMetrics(k, device)
    val_chips = real.split(val_split)
    order = PairedOrder(opts.seed)

    log.info("training %s/%s on %d real + %d synthetic chips (R=%g, %s), validating on %d real "
             "chips, %d steps (%s) on %s", opts.arch, opts.encoder, mix.n_real,
             mix.n_synthetic, ratio, mode, len(val_chips) if val_idx is None else len(val_idx),
             total, " + ".join(f"{n}: {t}" for (n, _, _), t in zip(phases, phase_steps,
                                                                     strict=True)), device)
    start = _now()
    history: list[EpochRecord] = []
    best: dict[str, Any] = {"miou": -1.0, "epoch": 0, "step": 0, "state": None,
                            "metrics": None}
    stopped = "completed"
    step = 0
    epoch = 0
    schedule: BudgetSchedule | None = None
    pending: dict[str, Any] = {"losses": [], "chips": 0, "t0": _now(), "train_s": 0.0}

    def validate(phase: str, keep: bool = True) -> float:
        """Score the model on the validation chips; keep its weights if ``keep`` and best."""
        nonlocal best
        t_val = _now()
        metrics.reset()
        with float32_forward(model):
            evaluate_chips(model, val_chips, meta.normalizer, metrics, opts.val_batch_size,
                           device, indices=val_idx, shard=(acc.num_processes, acc.process_index))
        scores = metrics.compute(meta.classes.names)
        losses, train_s = pending["losses"], pending["train_s"]
        rec = EpochRecord(epoch, len(losses), float(np.mean(losses)) if losses else float("nan"),
                          scores["miou"], scores["overall_accuracy"],
                          round(_now() - pending["t0"], 2), float(schedule.get_last_lr()[0]),
                          {"train_seconds": round(train_s, 3), "chips": pending["chips"],
                           "chips_per_s": round(pending["chips"] / max(train_s, 1e-9), 2),
                           "step": step, "phase": phase,
                           "val_seconds": round(_now() - t_val, 3)})
        history.append(rec)
        log.info("epoch %d, step %d (%s): loss %.4f, val mIoU %.4f, accuracy %.4f, lr %.2e",
                 epoch, step, phase, rec.loss, rec.val_miou, rec.val_accuracy, rec.lr)
        progress.emit({"event": EVENT_PROGRESS, "stage": "train-segmenter",
                       "fraction": round(step / total, 4),
                       "message": f"step {step}: val mIoU {rec.val_miou:.3f}",
                       "epoch": epoch, "val_miou": rec.val_miou, "loss": rec.loss})
        if keep and scores["miou"] > best["miou"]:
            state = acc.unwrap_model(model).state_dict()
            best = {"miou": scores["miou"], "epoch": epoch, "step": step, "metrics": scores,
                    "state": {n: t.detach().cpu().clone() for n, t in state.items()}}
        pending.update(losses=[], chips=0, t0=_now(), train_s=0.0)
        return float(scores["miou"])

    with progress.task("train-segmenter", total=total, unit="step") as bar:
        for p_i, ((phase, n_r, n_s), p_steps) in enumerate(zip(phases, phase_steps,
                                                                 strict=True)):
            annealing = phase == ANNEAL_PHASE
            last_phase = p_i == len(phases) - 1 - int(bool(opts.anneal_steps))
            # the kept model: the best validation of the last phase (the real chips' phase of
            # pretrain, never the synthetic pre-training alone), or the anneal's average
            keep = last_phase and not opts.anneal_steps
            rows_of_phase = phase_rows(n_r, n_s)
            if phase == "real fine-tuning":  # batch norm from the synthetic phase: re-estimated
                reestimate_batch_norm(model, mix, entries[phase_rows(n_r, 0)], meta.normalizer,
                                      opts.batch_size, device)
            schedule = BudgetSchedule(
                raw_optimizer, "cosine" if annealing else opts.lr_schedule,
                0.0 if annealing else opts.warmup_fraction, p_steps,
                seconds_budget * shares[p_i] if seconds_budget and shares[p_i] else None,
                clock=_now)
            averager = average_weights(raw_optimizer, acc.unwrap_model(model)) \
                if annealing else None
            phase_start, phase_epoch0 = step, epoch
            best_in_phase = {"step": step, "epoch": epoch, "miou": -1.0}
            end = None
            while end is None:
                epoch += 1
                model.train()
                batches = [rows_of_phase[b] for b in on_top_batches(
                    order, n_r, n_s, opts.batch_size, acc.num_processes, acc.process_index)] \
                    if on_top else order_batches(rows_of_phase[order.epoch(n_r, n_s)],
                                                 opts.batch_size, acc.num_processes,
                                                 acc.process_index)
                for rows in batches:
                    t_step = _now()
                    x, y = pipeline(entries[rows])
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with acc.autocast():
                        logits = forward_logits(model, x)
                        loss = loss_fn(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    optimizer.step()
                    p = schedule.progress(schedule.step_done + 1)
                    if acc.num_processes > 1:  # one learning rate for every process
                        p = float(acc.reduce(torch.tensor([p], device=device), "max").item())
                    schedule.step(p)  # at p = 1 the learning rate is at its end
                    pending["losses"].append(float(loss.detach()))
                    check_finite_loss(pending["losses"][-1], step + 1, dataset, opts.lr)
                    pending["chips"] += len(rows)
                    pending["train_s"] += _now() - t_step
                    step += 1
                    bar.update(1, message=f"{phase}: epoch {epoch}", epoch=epoch,
                               loss=pending["losses"][-1])
                    if p >= 1.0:  # the planned steps are done or the time is up (every process)
                        end = "time limit" if step - phase_start < p_steps else "completed"
                        break
                    if opts.val_every and step % opts.val_every == 0:
                        score = validate(phase, keep)
                        if score > best_in_phase["miou"]:
                            best_in_phase = {"step": step, "epoch": epoch, "miou": score}
                        if opts.patience_steps and not annealing and \
                                step - best_in_phase["step"] >= opts.patience_steps:
                            end = (f"early stop (no better val mIoU for "
                                   f"{opts.patience_steps} steps)")
                            break
                if end is None and not opts.val_every:
                    score = validate(phase, keep)
                    if score > best_in_phase["miou"]:
                        best_in_phase = {"step": step, "epoch": epoch, "miou": score}
                    if opts.patience and not annealing and \
                            epoch - max(best_in_phase["epoch"], phase_epoch0) \
                            >= opts.patience:
                        end = f"early stop (no better val mIoU for {opts.patience} epochs)"
            if averager is not None:  # the kept model: the average over the anneal
                averager.remove()
                acc.unwrap_model(model).load_state_dict(averager.model.module.state_dict())
                best["miou"] = -1.0
                validate("average of the anneal")
            elif pending["losses"] or not history:
                validate(phase, keep)
            if len(phases) > 1:
                log.info("%s: %s after %d steps", phase, end, step - phase_start)
            if last_phase:
                stopped = end
    seconds = round(_now() - start, 1)
    training = {
        "options": asdict(opts), "ratio": ratio, "dataset": str(real.path),
        "synthetic_mode": mode, "phases": [
            {"phase": n, "real_chips": r, "synthetic_chips": s_, "planned_steps": t}
            for (n, r, s_), t in zip(phases, phase_steps, strict=True)],
        "synthetic": [str(s.path) for s in syn_stores],
        "real_chips": 0 if opts.synthetic_only else mix.n_real,
        "synthetic_chips": mix.n_synthetic, "validation_chips": int(
            len(val_chips) if val_idx is None else len(val_idx)),
        "validation": "val split" if val_idx is None else "10% of train held out",
        "class_weights": weights, "best_epoch": best["epoch"], "best_step": best["step"],
        "epochs_run": epoch, "validations": len(history),
        "stopped": stopped, "steps": step, "seconds": seconds, "device": str(device),
        "synthetic_on_top": on_top, "kept": "average of the anneal" if opts.anneal_steps else
        "best validation" + (" of the real fine-tuning" if mode == "pretrain" else ""),
        "processes": acc.num_processes,
        "history": [asdict(h) for h in history],
    }
    cfg.metrics = {"split": "val" if val_idx is None else "train-holdout", **best["metrics"]}
    cfg.training = training
    metrics_doc = {"miou": best["miou"], "best_epoch": best["epoch"], "validation": cfg.metrics,
                   "history": training["history"], "ratio": ratio,
                   "real_chips": training["real_chips"], "synthetic_chips": mix.n_synthetic,
                   "synthetic_mode": mode, "best_step": best["step"], "steps": step,
                   "seconds": seconds, "stopped": stopped}
    acc.wait_for_everyone()
    if acc.is_main_process:
        import json

        save_model_dir(out, "segmenter", cfg.to_dict(), {"model": best["state"]},
                       extra_files={"metrics.json": json.dumps(metrics_doc, indent=2) + "\n"})
        log.info("saved %s (best val mIoU %.4f at epoch %d, %s)", out, best["miou"],
                 best["epoch"], stopped)
    acc.wait_for_everyone()
    return {"model": str(out), "metrics": str(out / "metrics.json"), "miou": float(best["miou"])}


__all__ = ["SegmenterTrainOptions", "train_segmenter"]
