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
    """Train (or with ``resume=True`` continue training) a generator on a chip store.

    Args:
        dataset: the chip store to learn from (its ``train`` split).
        out: the model folder to write.
        **options: the fields of :class:`GeneratorTrainOptions`.

    Returns:
        The model folder.
    """
    return run_training(dataset, out, **options)["model"]


def run_training(dataset: str | Path, out: str | Path, stage: TrainStage | None = None,
                 **options: Any) -> dict[str, Any]:
    """Like :func:`train_generator`, returning all outputs.

    Args:
        dataset: the chip store to learn from (its ``train`` split).
        out: the model folder to write (checkpoints go here; with ``resume=True`` the one to
            continue).
        stage: which model of the cascade to train (:class:`TrainStage`; default: the base
            generator).
        **options: the fields of :class:`GeneratorTrainOptions`.

    Returns:
        ``{"model": folder, "log": train_log.csv, "loss_plot": loss.png, "steps": optimizer
        steps done in all, "interrupted": stopped on request}``.
    """
    stage = stage or TrainStage()
    opts = GeneratorTrainOptions.from_kwargs(**options)
    out = check_output(out, stage.kind, inputs=[dataset])
    store = _open_dataset(dataset)
    cfg, resume_state = _run_config(stage, store, out, opts, options)
    trainer = GeneratorTrainer(stage, cfg, store, out, opts, resume_state, dataset)
    trainer.fit()
    return trainer.finish()


def _run_config(stage: TrainStage, store: ChipStore, out: Path, opts: GeneratorTrainOptions,
                options: dict[str, Any]) -> tuple[GeneratorConfig, dict[str, Any] | None]:
    """The run's model config, new or from the checkpoint being resumed, and the checkpoint's
    training state (None: a new run)."""
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
    LabelEncoding(cfg.encoding, cfg.num_classes)  # validates
    if resume_state is None:
        check_recipe_size(opts.recipe, cfg.chip_size, store.path)
    return cfg, resume_state


class GeneratorTrainer:
    """One training run of a diffusion model of the cascade under Accelerate, in the steps of a
    TorchGeo trainer: :meth:`configure_model` (UNet, AdamW, EMA, or the checkpoint's),
    :meth:`configure_data`, :meth:`draw_batch`, :meth:`training_step`, then :meth:`fit` and
    :meth:`finish`.

    Args:
        stage: which model of the cascade it trains.
        cfg: the model's config (:func:`_run_config`).
        store: the chip store to learn from.
        out: the model folder.
        opts: the run's options.
        resume_state: the checkpoint's training state (None: a new run).
        dataset: the dataset as given (named in a non-finite-loss error).
    """

    def __init__(self, stage: TrainStage, cfg: GeneratorConfig, store: ChipStore, out: Path,
                 opts: GeneratorTrainOptions, resume_state: dict[str, Any] | None,
                 dataset: str | Path) -> None:
        from accelerate import Accelerator

        from satsynth.device import mixed_precision_for, resolve_device
        from satsynth.generator.model import noise_scheduler

        self.stage, self.cfg, self.store, self.out, self.opts = stage, cfg, store, out, opts
        self.dataset = dataset
        self.enc = LabelEncoding(cfg.encoding, cfg.num_classes)
        dev = resolve_device(opts.device)
        mp = mixed_precision_for(opts.mixed_precision, dev)
        self.acc = Accelerator(cpu=dev.type == "cpu", mixed_precision=mp,
                               gradient_accumulation_steps=opts.grad_accum)
        self.device = self.acc.device
        self.main = self.acc.is_main_process
        self.step = 0
        self.rows: list[dict[str, Any]] = []  # the training log
        self.prev_elapsed = 0.0  # seconds of the runs before a resume
        self.start_frac = 0.0  # the share of the steps they did
        self.configure_model(resume_state)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        self.ema.to(self.device)
        self.sched = noise_scheduler(cfg)
        self.configure_data()
        self.interrupted = False

    def configure_model(self, resume_state: dict[str, Any] | None) -> None:
        """The UNet, its AdamW optimizer and the EMA of its weights: new (seeded), or the
        checkpoint's; and the options recorded in the model's config."""
        import torch
        from diffusers.training_utils import EMAModel

        from satsynth.generator.model import build_unet

        opts, cfg = self.opts, self.cfg
        torch.manual_seed(opts.seed)
        self.model = build_unet(cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opts.lr,
                                           weight_decay=opts.weight_decay)
        self.ema = EMAModel(self.model.parameters(), decay=opts.ema_decay, use_ema_warmup=True,
                            power=0.75)
        if resume_state is not None:
            self.load_checkpoint(resume_state)
        cfg.training = {k: v for k, v in opts.to_dict().items() if k not in ("resume",)}
        if resume_state is not None:
            for key in KEPT_ON_RESUME:
                cfg.training[key] = (resume_state.get("options") or {}).get(key,
                                                                            cfg.training[key])

    def load_checkpoint(self, resume_state: dict[str, Any]) -> None:
        """Continue from the model folder's checkpoint: weights, EMA, optimizer, step, log."""
        out, opts, model = self.out, self.opts, self.model
        model.load_state_dict(load_tensors(out, "model"))
        ema_state = load_tensors(out, "ema")
        names = [n for n, _ in model.named_parameters()]
        missing = [n for n in names if n not in ema_state]
        if missing:
            raise SatSynthError(f"ema.safetensors lacks {len(missing)} weights", out)
        self.ema.shadow_params = [ema_state[n].clone() for n in names]
        self.ema.optimization_step = int(resume_state.get("ema_step", self.cfg.step))
        opt_tensors = load_tensors(out, "optimizer")
        self.optimizer.load_state_dict(_unflatten_optimizer(opt_tensors,
                                                            resume_state["optimizer"]))
        step = self.step = int(self.cfg.step)
        self.rows = [r for r in _read_log(out / LOG_NAME) if r["step"] <= step]
        self.prev_elapsed = float(resume_state.get("elapsed_s", 0.0))
        self.start_frac = min(1.0, step / max(opts.steps, 1))
        log.info("resuming from step %d", step)
        if step >= opts.steps and opts.minutes is None:
            log.warning("the checkpoint is already at step %d >= --steps %d: nothing to do",
                        step, opts.steps)

    def configure_data(self) -> None:
        """The training chips, their sampling weights (``class_balanced``) and class shares
        (the ``class-shares`` condition; at most :data:`MAX_STORED_CONDITIONS` of them are kept
        in the model folder to draw conditions from at sampling time)."""
        import torch

        from satsynth.data.torch_dataset import ChipDataset

        opts, cfg, store = self.opts, self.cfg, self.store
        self.data = ChipDataset(store, "train")
        self.n_chips = n_chips = len(self.data)
        counts = chip_class_counts(store.split("train").labels, cfg.num_classes) \
            if opts.class_balanced or cfg.condition == "class-shares" else None
        self.weights = _chip_weights(counts) if opts.class_balanced else None
        self.shares = None
        self.stored_shares: dict[str, Any] = {}
        if cfg.condition == "class-shares":
            self.shares = shares = torch.from_numpy(
                counts / np.maximum(counts.sum(1, keepdims=True), 1.0)).float()
            keep = np.random.default_rng(opts.seed).permutation(n_chips)[:MAX_STORED_CONDITIONS]
            self.stored_shares = {"conditions": {"class_shares": shares[np.sort(keep)].clone()}}

    def draw_batch(self, step_i: int, micro: int) -> tuple[Any, Any, Any, Any, Any, Any]:
        """The chips, noise and timesteps of one micro-batch, from generators seeded by (seed,
        step, micro-batch, process): (image, mask, noise, timesteps, condition, extra input)."""
        import torch

        from satsynth.data.augment import random_dihedral_batch

        opts, n_chips, weights = self.opts, self.n_chips, self.weights
        rng = np.random.default_rng([opts.seed, step_i, micro, self.acc.process_index])
        idx = rng.choice(n_chips, opts.batch_size, replace=n_chips < opts.batch_size, p=weights) \
            if weights is not None or n_chips < opts.batch_size \
            else rng.choice(n_chips, opts.batch_size, replace=False)
        img, mask = self.data.get_batch(np.sort(idx))
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if opts.augment:
            img, mask = random_dihedral_batch(img, mask, generator=g)
        img, mask, extra = self.stage.inputs(self.cfg, img, mask, g)
        noise = torch.randn((img.shape[0], self.cfg.channels, *img.shape[2:]), generator=g)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (img.shape[0],), generator=g)
        # dihedral moves keep the class shares
        cond = self.shares[np.sort(idx)] if self.shares is not None else None
        return img, mask, noise, t, cond, extra

    def training_step(self, lr: float) -> float:
        """One optimizer step (``grad_accum`` micro-batches) at learning rate ``lr``; returns
        the sum of the micro-batches' losses."""
        acc, model, opts = self.acc, self.model, self.opts
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(opts.grad_accum):
            img, mask, noise, t, cond, extra = self.draw_batch(self.step, micro)
            with acc.accumulate(model):
                loss = self.diffusion_loss(img, mask, noise, t, cond, extra)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), opts.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
        return loss_sum

    def diffusion_loss(self, img: Any, mask: Any, noise: Any, t: Any, cond: Any,
                       extra: Any) -> Any:
        """The batch's loss: the squared error of the prediction of the noisy pair's target
        (epsilon or v), over the image bands and the labelled pixels of the mask channels,
        weighted by the noise level's SNR (``snr_gamma``)."""
        import torch
        from diffusers.training_utils import compute_snr

        device, sched, cfg = self.device, self.sched, self.cfg
        pred_type = cfg.diffusion.prediction_type
        x0 = torch.cat([img, self.enc.encode(mask)], 1).to(device)
        noise, t = noise.to(device), t.to(device)
        xt = sched.add_noise(x0, noise, t)
        inp = xt if extra is None else torch.cat([xt, extra.to(device)], 1)
        target = noise if pred_type == "epsilon" else sched.get_velocity(x0, noise, t)
        if cond is not None:
            cond = cond.to(device)
        with self.acc.autocast():
            pred = self.model(inp, t, class_labels=cond).sample
        err = (pred.float() - target) ** 2
        w = torch.ones_like(err[:1, :, :1, :1]).expand_as(err).clone()
        w[:, cfg.bands:] = (mask != IGNORE_INDEX).to(device)[:, None].float()
        per = (err * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp(min=1.0)
        if self.opts.snr_gamma is not None:
            per = per * snr_loss_weight(compute_snr(sched, t), self.opts.snr_gamma,
                                        self.opts.snr_weighting, pred_type)
        return per.mean()

    def fit(self) -> None:
        """Train until ``steps``, the time budget or a cancel request; checkpoint every
        ``checkpoint_every`` steps (the final checkpoint: :meth:`finish`)."""
        opts = self.opts
        self.budget = opts.minutes * 60.0 if opts.minutes else None
        self.t_start = time.monotonic()
        self.first_step = self.step
        self.model.train()
        bar = progress.task(self.stage.task, total=opts.steps, unit="step") if self.main \
            else None
        if bar is not None and self.step:
            bar.n = self.step
        try:
            while self.step < opts.steps:
                elapsed = time.monotonic() - self.t_start
                if self._should_stop(elapsed):
                    self.interrupted = progress.cancel_requested()
                    break
                lr = opts.lr * _lr_factor(self.step, self._progress(elapsed), opts.warmup)
                loss_sum = self.training_step(lr)
                check_finite_loss(loss_sum, self.step + 1, self.dataset, lr)
                self.ema.step(self.acc.unwrap_model(self.model).parameters())
                self.step += 1
                self._log_step(loss_sum, lr, bar)
                if self.step % opts.checkpoint_every == 0 and self.step < opts.steps:
                    self.save(final=False)
        finally:
            if bar is not None:
                bar.close()

    def _should_stop(self, elapsed: float) -> bool:
        """A cancel request or the time budget used up (on any process)."""
        import torch

        stop = progress.cancel_requested() or (self.budget is not None and elapsed >= self.budget)
        if self.acc.num_processes > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            stop = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        return stop

    def _progress(self, elapsed: float) -> float:
        """The run's progress fraction: of its steps, or of its time budget when further."""
        frac = self.step / self.opts.steps
        if self.budget is not None:
            frac = max(frac, self.start_frac + (1 - self.start_frac) * elapsed / self.budget)
        return frac

    def _log_step(self, loss_sum: float, lr: float, bar: Any) -> None:
        """Add the step just done to the training log and the progress bar."""
        step, budget = self.step, self.budget
        run_s = time.monotonic() - self.t_start
        rate = (step - self.first_step) / max(run_s, 1e-9)
        self.rows.append({"step": step, "loss": round(loss_sum / self.opts.grad_accum, 6),
                          "lr": round(lr, 8), "elapsed_s": round(self.prev_elapsed + run_s, 3),
                          "steps_per_s": round(rate, 4)})
        if bar is not None:
            eta = (self.opts.steps - step) / rate if rate > 0 else None
            if budget is not None and eta is not None:
                eta = min(eta, max(budget - run_s, 0.0))
            if not progress.cancel_requested():
                bar.update(1, message=f"step {step}", step=step, loss=self.rows[-1]["loss"],
                           steps_per_s=round(rate, 3),
                           eta_s=round(eta, 1) if eta is not None else None)

    def save(self, final: bool) -> None:
        """Write the checkpoint: weights, EMA, optimizer state (safetensors), config.json with
        the training state, and the training log."""
        if self.main:
            unwrapped = self.acc.unwrap_model(self.model)
            names = [n for n, _ in unwrapped.named_parameters()]
            ema_sd = {n: p for n, p in zip(names, self.ema.shadow_params, strict=True)}
            opt_tensors, groups = _flatten_optimizer(self.optimizer.state_dict())
            cfg = self.cfg
            cfg.step = self.step
            config = cfg.to_dict()
            config["training_state"] = {
                "optimizer": groups, "ema_step": self.ema.optimization_step,
                "elapsed_s": self.prev_elapsed + (time.monotonic() - self.t_start),
                "options": cfg.training, "final": final}
            save_model_dir(self.out, self.stage.kind, config,
                           {"model": unwrapped.state_dict(), "ema": ema_sd,
                            "optimizer": opt_tensors, **self.stored_shares},
                           extra_files={LOG_NAME: _log_text(self.rows)})
        self.acc.wait_for_everyone()

    def finish(self) -> dict[str, Any]:
        """Say why training stopped, write the final checkpoint and the loss plot; returns
        the outputs as :func:`run_training`."""
        opts, out, step = self.opts, self.out, self.step
        if self.interrupted:
            log.warning("stopped on request at step %d; checkpoint written (continue with "
                        "--resume)", step)
        elif self.budget is not None and step < opts.steps:
            log.info("time budget of %.1f min reached at step %d", opts.minutes, step)
        self.save(final=True)
        plot = out / PLOT_NAME
        if self.main:
            plot_loss(self.rows, plot)
        self.acc.wait_for_everyone()
        return {"model": out, "log": out / LOG_NAME, "loss_plot": plot, "steps": step,
                "interrupted": self.interrupted}
