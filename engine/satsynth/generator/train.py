"""Training the joint image-mask diffusion model (``satsynth train-generator``).

Runs unchanged on a CPU, one GPU or many through Hugging Face Accelerate
(``accelerate launch --num_processes N -m satsynth train-generator ...``). Every optimizer step
draws its batch and noise from generators seeded by (seed, step, process), so a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.checkpoint import check_finite_loss, load_config, load_tensors, save_model_dir
from satsynth.data.classes import IGNORE_INDEX
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError
from satsynth.generator.config import (
    ArchConfig,
    DiffusionConfig,
    GeneratorConfig,
    GeneratorTrainOptions,
    check_recipe_size,
)
from satsynth.generator.encoding import LabelEncoding
from satsynth.outputs import check_output
from satsynth.raster import footprint_boxes

log = logging.getLogger("satsynth")

LOG_NAME = "train_log.csv"
PLOT_NAME = "loss.png"
LOG_FIELDS = ("step", "loss", "lr", "elapsed_s", "steps_per_s")
#: options fixed by the architecture or the data encoding: a resumed run keeps the checkpoint's
KEPT_ON_RESUME = ("preset", "block_widths", "encoding", "prediction", "beta_schedule", "condition",
                  "size", "recipe")
#: at most this many training chips' class shares are kept in a class-share-conditioned model
#: folder (``conditions.safetensors``), to draw conditions from at sampling time
MAX_STORED_CONDITIONS = 65536


# --- dataset facts ---------------------------------------------------------------------------
def _extent(store: ChipStore) -> tuple[list[float] | None, bool]:
    """(minx, miny, maxx, maxy) of all chips and whether rows go down in y (negative e)."""
    s = store.meta.chip_size
    boxes = []
    y_up = True
    for split in ("train", "val"):
        if not store.has_split(split) or not len(store.split(split)):
            continue
        t = np.asarray(store.split(split).transforms, dtype=np.float64)
        fb = footprint_boxes(t, s)
        boxes.append([fb[:, 0].min(), fb[:, 1].min(), fb[:, 2].max(), fb[:, 3].max()])
        y_up = bool(np.median(t[:, 4]) < 0)
    if not boxes:
        return None, y_up
    b = np.asarray(boxes)
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
            float(b[:, 3].max())], y_up


def chip_class_counts(labels: np.ndarray, num_classes: int, block: int = 512) -> np.ndarray:
    """(N, K) labelled-pixel counts per chip and class (ignored pixels are not counted)."""
    n = labels.shape[0]
    counts = np.zeros((n, num_classes), np.float64)
    for k in range(0, n, block):
        lab = np.asarray(labels[k:k + block]).reshape(min(block, n - k), -1)
        for c in range(num_classes):
            counts[k:k + len(lab), c] = (lab == c).sum(1)
    return counts


def _chip_weights(counts: np.ndarray) -> np.ndarray:
    """Class-balanced sampling weights: each chip's pixel mix weighted by 1/sqrt(class share)."""
    share = counts.sum(0) / max(counts.sum(), 1.0)
    inv = np.where(share > 0, 1.0 / np.sqrt(np.maximum(share, 1e-12)), 0.0)
    frac = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    w = frac @ inv
    w = np.where(w > 0, w, w[w > 0].min() if (w > 0).any() else 1.0)
    return w / w.sum()


def _open_dataset(dataset: str | Path) -> ChipStore:
    store = ChipStore(dataset)
    if store.meta.synthetic:
        log.warning("%s is a synthetic set: training a generator on generated chips", dataset)
    if not store.has_split("train"):
        raise SatSynthError("the dataset has no 'train' split to learn from", store.path)
    if len(store.split("train")) == 0:
        raise SatSynthError("the dataset has no training chips (empty 'train' split): prepare it "
                            "from a larger area or a smaller --chip-size", store.path)
    return store


def new_config(store: ChipStore, opts: GeneratorTrainOptions) -> GeneratorConfig:
    """A fresh base-generator config for a dataset and the run's options."""
    from satsynth.generator.resample import check_factor

    meta = store.meta
    arch = ArchConfig.preset(opts.preset, opts.block_widths)
    diff = DiffusionConfig(beta_schedule=opts.beta_schedule, prediction_type=opts.prediction)
    diff.check()
    LabelEncoding(opts.encoding, meta.classes.num_classes)  # validates
    extent, y_up = _extent(store)
    size = opts.size or meta.chip_size
    f = check_factor(meta.chip_size, size, "--size")
    return GeneratorConfig(
        arch=arch, diffusion=diff, encoding=opts.encoding, classes=meta.classes,
        normalization=meta.normalizer, bands=meta.bands, dtype=meta.dtype,
        chip_size=size, source_chip_size=meta.chip_size if f > 1 else None, crs=meta.crs,
        pixel_size=[float(p) * f for p in meta.pixel_size] if meta.pixel_size else None,
        source_extent=extent, y_up=y_up,
        real_class_shares=[float(v) for v in meta.class_shares("train")], condition=opts.condition,
        dataset=str(Path(store.path).resolve()), model_id=f"gen-{uuid.uuid4().hex[:10]}")


def _check_compatible(cfg: GeneratorConfig, store: ChipStore, where: Path) -> None:
    meta = store.meta
    problems = []
    if meta.bands != cfg.bands:
        problems.append(f"the dataset has {meta.bands} bands, the model {cfg.bands}")
    if meta.chip_size != (cfg.source_chip_size or cfg.chip_size):
        problems.append(f"the dataset's chips are {meta.chip_size} px, the model was trained on "
                        f"{cfg.source_chip_size or cfg.chip_size} px chips")
    if meta.classes.ids != cfg.classes.ids:
        problems.append(f"the class tables differ (dataset ids {meta.classes.ids})")
    if problems:
        raise SatSynthError("cannot resume on this dataset: " + "; ".join(problems), where)


# --- optimizer state as flat tensors (safetensors, never pickle) -----------------------------
def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"{pid}.{key}"] = t
    return tensors, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    return {"state": state, "param_groups": groups["param_groups"]}


def _lr_factor(step: int, frac: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% over the run's progress fraction."""
    w = min(1.0, (step + 1) / max(warmup, 1))
    return w * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0))))


def snr_loss_weight(snr: Any, gamma: float, weighting: str, prediction: str) -> Any:
    """Per-sample loss weights for noise levels with signal-to-noise ratios ``snr``: the clean-
    sample weight min(SNR, gamma) (``min-snr``) or min(SNR + 1, gamma) (``min-snr+1``),
    expressed for the training target (epsilon or v)."""
    import torch

    base = snr + 1 if weighting == "min-snr+1" else snr
    clipped = torch.clamp(base, max=gamma)
    return clipped / snr if prediction == "epsilon" else clipped / (snr + 1)


# --- log and plot ------------------------------------------------------------------------------
def _log_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in LOG_FIELDS})
    return buf.getvalue()


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"]),
                 "elapsed_s": float(r["elapsed_s"]), "steps_per_s": float(r["steps_per_s"])}
                for r in csv.DictReader(fh)]


def plot_loss(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss curve PNG (raw per step and a moving average), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from satsynth.io import atomic_path

    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(loss):
        ax.plot(steps, loss, color="0.75", lw=0.6, label="per step")
        k = max(1, min(50, len(loss) // 10))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", lw=1.5, label=f"mean of {k}")
        if loss.min() > 0:
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted diffusion loss")
    ax.set_title("generator training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# --- training ------------------------------------------------------------------------------------
def resized_pair(cfg: GeneratorConfig, image: Any, mask: Any, generator: Any = None
                 ) -> tuple[Any, Any, Any]:
    """The base generator's training pair: real chips at the model's size (area-downsampled
    images, majority-class masks when ``--size`` is below the chips' size); no extra input.
    (``generator``: the batch's random stream, unused here.)"""
    from satsynth.generator.resample import downsample_pair

    return (*downsample_pair(image, mask, cfg.chip_size, cfg.num_classes), None)


@dataclass(frozen=True)
class TrainStage:
    """Which model of the cascade the training loop trains (the base generator by default).

    ``new_config(store, opts)`` makes a fresh config; ``inputs(cfg, image, mask, generator)`` turns a batch
    of real chips (model-space images, class-index masks, at the dataset's chip size) into the
    pair to learn at the model's size plus extra input channels concatenated to the noisy pair
    (None: none), drawing anything random from ``generator`` (the batch's stream, so a resumed
    run draws the same); ``kind`` is the model folder's kind and ``task`` the progress task's
    name."""

    kind: str = "generator"
    task: str = "train-generator"
    config_type: type[GeneratorConfig] = GeneratorConfig
    new_config: Callable[[ChipStore, GeneratorTrainOptions], GeneratorConfig] = new_config
    inputs: Callable[[GeneratorConfig, Any, Any, Any], tuple[Any, Any, Any]] = resized_pair


def train_generator(dataset: str | Path, out: str | Path, **options: Any) -> Path:
    """Train (or with ``resume=True`` continue training) a generator on a chip store; returns the
    model folder. ``options`` are the fields of :class:`GeneratorTrainOptions`."""
    return run_training(dataset, out, **options)["model"]


def run_training(dataset: str | Path, out: str | Path, stage: TrainStage | None = None,
                 **options: Any) -> dict[str, Any]:
    """Like :func:`train_generator`, returning all outputs (model, log, loss plot, steps);
    ``stage`` trains another model of the cascade (see :class:`TrainStage`)."""
    import torch
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel, compute_snr

    from satsynth.data.augment import random_dihedral_batch
    from satsynth.data.torch_dataset import ChipDataset
    from satsynth.device import mixed_precision_for, resolve_device
    from satsynth.generator.model import build_unet, noise_scheduler

    stage = stage or TrainStage()
    opts = GeneratorTrainOptions.from_kwargs(**options)
    out = check_output(out, stage.kind, inputs=[dataset])
    store = _open_dataset(dataset)

    # --- configuration: new, or from the checkpoint being resumed
    resume_state: dict[str, Any] | None = None
    if opts.resume:
        if not (out / "config.json").is_file():
            raise SatSynthError("--resume: no checkpoint here to continue from (config.json "
                                "missing); train without --resume first", out)
        raw = load_config(out, stage.kind)
        cfg = stage.config_type.from_dict(raw, out / "config.json")
        _check_compatible(cfg, store, out)
        resume_state = raw.get("training_state") or {}
        prev = cfg.training or {}
        for key in KEPT_ON_RESUME:
            if key in prev and key in options and options[key] is not None \
                    and options[key] != prev[key]:
                log.warning("--resume keeps the checkpoint's %s=%s (ignoring %s)", key, prev[key],
                            options[key])
    else:
        cfg = stage.new_config(store, opts)
    enc = LabelEncoding(cfg.encoding, cfg.num_classes)
    if resume_state is None:
        check_recipe_size(opts.recipe, cfg.chip_size, store.path)

    dev = resolve_device(opts.device)
    mp = mixed_precision_for(opts.mixed_precision, dev)
    acc = Accelerator(cpu=dev.type == "cpu", mixed_precision=mp,
                      gradient_accumulation_steps=opts.grad_accum)
    device = acc.device
    main = acc.is_main_process

    torch.manual_seed(opts.seed)
    model = build_unet(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    ema = EMAModel(model.parameters(), decay=opts.ema_decay, use_ema_warmup=True, power=0.75)
    step = 0
    rows: list[dict[str, Any]] = []
    prev_elapsed = 0.0
    start_frac = 0.0
    if resume_state is not None:
        model.load_state_dict(load_tensors(out, "model"))
        ema_state = load_tensors(out, "ema")
        names = [n for n, _ in model.named_parameters()]
        missing = [n for n in names if n not in ema_state]
        if missing:
            raise SatSynthError(f"ema.safetensors lacks {len(missing)} weights", out)
        ema.shadow_params = [ema_state[n].clone() for n in names]
        ema.optimization_step = int(resume_state.get("ema_step", cfg.step))
        opt_tensors = load_tensors(out, "optimizer")
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, resume_state["optimizer"]))
        step = int(cfg.step)
        rows = [r for r in _read_log(out / LOG_NAME) if r["step"] <= step]
        prev_elapsed = float(resume_state.get("elapsed_s", 0.0))
        start_frac = min(1.0, step / max(opts.steps, 1))
        log.info("resuming from step %d", step)
        if step >= opts.steps and opts.minutes is None:
            log.warning("the checkpoint is already at step %d >= --steps %d: nothing to do",
                        step, opts.steps)

    cfg.training = {k: v for k, v in opts.to_dict().items() if k not in ("resume",)}
    if resume_state is not None:
        for key in KEPT_ON_RESUME:
            cfg.training[key] = (resume_state.get("options") or {}).get(key, cfg.training[key])

    model, optimizer = acc.prepare(model, optimizer)
    ema.to(device)
    sched = noise_scheduler(cfg)
    T = sched.config.num_train_timesteps
    pred_type = cfg.diffusion.prediction_type

    data = ChipDataset(store, "train")
    n_chips = len(data)
    counts = chip_class_counts(store.split("train").labels, cfg.num_classes) \
        if opts.class_balanced or cfg.condition == "class-shares" else None
    weights = _chip_weights(counts) if opts.class_balanced else None
    shares = None
    stored_shares: dict[str, Any] = {}
    if cfg.condition == "class-shares":
        shares = torch.from_numpy(counts / np.maximum(counts.sum(1, keepdims=True), 1.0)).float()
        keep = np.random.default_rng(opts.seed).permutation(n_chips)[:MAX_STORED_CONDITIONS]
        stored_shares = {"conditions": {"class_shares": shares[np.sort(keep)].clone()}}
    rank, world = acc.process_index, acc.num_processes

    def batch(step_i: int, micro: int) -> tuple[Any, Any, Any, Any, Any, Any]:
        seq = [opts.seed, step_i, micro, rank]
        rng = np.random.default_rng(seq)
        idx = rng.choice(n_chips, opts.batch_size, replace=n_chips < opts.batch_size, p=weights) \
            if weights is not None or n_chips < opts.batch_size \
            else rng.choice(n_chips, opts.batch_size, replace=False)
        img, mask = data.get_batch(np.sort(idx))
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if opts.augment:
            img, mask = random_dihedral_batch(img, mask, generator=g)
        img, mask, extra = stage.inputs(cfg, img, mask, g)
        noise = torch.randn((img.shape[0], cfg.channels, *img.shape[2:]), generator=g)
        t = torch.randint(0, T, (img.shape[0],), generator=g)
        cond = shares[np.sort(idx)] if shares is not None else None  # dihedral moves keep shares
        return img, mask, noise, t, cond, extra

    def save(final: bool) -> None:
        if main:
            unwrapped = acc.unwrap_model(model)
            names = [n for n, _ in unwrapped.named_parameters()]
            ema_sd = {n: p for n, p in zip(names, ema.shadow_params, strict=True)}
            opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
            cfg.step = step
            config = cfg.to_dict()
            config["training_state"] = {"optimizer": groups, "ema_step": ema.optimization_step,
                                        "elapsed_s": prev_elapsed + (time.monotonic() - t_start),
                                        "options": cfg.training, "final": final}
            save_model_dir(out, stage.kind, config,
                           {"model": unwrapped.state_dict(), "ema": ema_sd,
                            "optimizer": opt_tensors, **stored_shares},
                           extra_files={LOG_NAME: _log_text(rows)})
        acc.wait_for_everyone()

    budget = opts.minutes * 60.0 if opts.minutes else None
    interrupted = False
    t_start = time.monotonic()
    first_step = step
    model.train()
    bar = progress.task(stage.task, total=opts.steps, unit="step") if main else None
    if bar is not None and step:
        bar.n = step
    try:
        while step < opts.steps:
            elapsed = time.monotonic() - t_start
            stop = progress.cancel_requested() or (budget is not None and elapsed >= budget)
            if world > 1:
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                stop = bool(acc.reduce(flag, reduction="sum").item() > 0)
            if stop:
                interrupted = progress.cancel_requested()
                break
            frac = step / opts.steps
            if budget is not None:
                frac = max(frac, start_frac + (1 - start_frac) * elapsed / budget)
            lr = opts.lr * _lr_factor(step, frac, opts.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(opts.grad_accum):
                img, mask, noise, t, cond, extra = batch(step, micro)
                with acc.accumulate(model):
                    x0 = torch.cat([img, enc.encode(mask)], 1).to(device)
                    noise, t = noise.to(device), t.to(device)
                    xt = sched.add_noise(x0, noise, t)
                    inp = xt if extra is None else torch.cat([xt, extra.to(device)], 1)
                    target = noise if pred_type == "epsilon" else sched.get_velocity(x0, noise, t)
                    if cond is not None:
                        cond = cond.to(device)
                    with acc.autocast():
                        pred = model(inp, t, class_labels=cond).sample
                    err = (pred.float() - target) ** 2
                    w = torch.ones_like(err[:1, :, :1, :1]).expand_as(err).clone()
                    w[:, cfg.bands:] = (mask != IGNORE_INDEX).to(device)[:, None].float()
                    per = (err * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp(min=1.0)
                    if opts.snr_gamma is not None:
                        per = per * snr_loss_weight(compute_snr(sched, t), opts.snr_gamma,
                                                    opts.snr_weighting, pred_type)
                    loss = per.mean()
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(model.parameters(), opts.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.detach())
            check_finite_loss(loss_sum, step + 1, dataset, lr)
            ema.step(acc.unwrap_model(model).parameters())
            step += 1
            run_s = time.monotonic() - t_start
            rate = (step - first_step) / max(run_s, 1e-9)
            rows.append({"step": step, "loss": round(loss_sum / opts.grad_accum, 6),
                         "lr": round(lr, 8), "elapsed_s": round(prev_elapsed + run_s, 3),
                         "steps_per_s": round(rate, 4)})
            if bar is not None:
                eta = (opts.steps - step) / rate if rate > 0 else None
                if budget is not None and eta is not None:
                    eta = min(eta, max(budget - run_s, 0.0))
                if not progress.cancel_requested():
                    bar.update(1, message=f"step {step}", step=step, loss=rows[-1]["loss"],
                               steps_per_s=round(rate, 3),
                               eta_s=round(eta, 1) if eta is not None else None)
            if step % opts.checkpoint_every == 0 and step < opts.steps:
                save(final=False)
    finally:
        if bar is not None:
            bar.close()
    if interrupted:
        log.warning("stopped on request at step %d; checkpoint written (continue with --resume)",
                    step)
    elif budget is not None and step < opts.steps:
        log.info("time budget of %.1f min reached at step %d", opts.minutes, step)
    save(final=True)
    plot = out / PLOT_NAME
    if main:
        plot_loss(rows, plot)
    acc.wait_for_everyone()
    return {"model": out, "log": out / LOG_NAME, "loss_plot": plot, "steps": step,
            "interrupted": interrupted}
