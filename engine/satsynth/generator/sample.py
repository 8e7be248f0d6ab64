"""Sampling image-mask pairs from a trained generator (``satsynth synthesize``).

:func:`load_synthesis` checks the options and loads the models, :func:`sample_pairs` samples
the pairs in batches (each process of a distributed run its share), and :func:`synthesize` writes
them through the one synthetic-folder writer
(:class:`~satsynth.generator.synthetic_store.SyntheticStoreWriter`): a chip store that the
segmenter reads like real chips, plus one GeoTIFF per image and per label chip on a grid just
beside the source's extent at true scale, VRT mosaics, a QML style, a report (class shares vs the
real labels, TV distance, invalid codes) and previews.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.contract import SynthesizeFields
from satsynth.data.classes import ClassTable
from satsynth.data.store import StoreMeta
from satsynth.distributed import Processes, processes
from satsynth.errors import SatSynthError
from satsynth.generator.config import GeneratorConfig, default_sampler
from satsynth.generator.encoding import LabelEncoding
from satsynth.generator.shards import Batch, batch_size_for, sampled_batches
from satsynth.generator.synthetic_store import SyntheticStoreWriter, chip_grid
from satsynth.generator.upsampler import (
    UpsamplerConfig,
    check_cascade,
    condition_input,
    load_upsampler,
)
from satsynth.outputs import check_output

log = logging.getLogger("satsynth")


def _noise(count: int, first: int, shape: tuple[int, ...], seed: int) -> Any:
    """Initial noise of samples first..first+count-1; each depends only on (seed, index)."""
    import torch

    out = torch.empty((count, *shape))
    for j in range(count):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, first + j])
                                              .generate_state(1)[0]))
        out[j] = torch.randn(shape, generator=g)
    return out


def draw_conditions(pool: np.ndarray, count: int, seed: int = 0,
                    favor: np.ndarray | None = None) -> np.ndarray:
    """``count`` class-share vectors drawn from ``pool`` (training chips' shares, (N, K)) by
    systematic sampling over the chips ordered by dominant class, so the mean of the draw is
    close to the pool's mean even for a few dozen samples; returned in random order.

    ``favor`` (K factors, 1 = as in the data) draws each chip with a probability proportional to
    1 + sum_k (favor_k - 1) * share_k: a factor of 3 for a class makes chips made only of it
    three times as likely as chips without it."""
    pool = np.asarray(pool, dtype=np.float32)
    if pool.ndim != 2 or not len(pool):
        raise SatSynthError("no class shares to draw sampling conditions from")
    rng = np.random.default_rng([seed, 0xC0])
    order = np.lexsort((-pool.max(1), pool.argmax(1)))
    w = np.ones(len(pool)) if favor is None else \
        1.0 + pool[order].astype(np.float64) @ (np.asarray(favor, np.float64) - 1.0)
    cum = np.cumsum(np.maximum(w, 0.0))
    pos = (rng.random() + np.arange(count)) / count * cum[-1]
    picks = pool[order[np.minimum(np.searchsorted(cum, pos, side="right"), len(pool) - 1)]]
    return picks[rng.permutation(count)]


def favor_factors(favor: dict[str, float] | None, table: ClassTable) -> np.ndarray | None:
    """Per-class draw factors from {class name or id: factor}, with a clear error for unknown
    classes or factors that are not positive."""
    if not favor:
        return None
    factors = np.ones(table.num_classes)
    ids = [str(v) for v in table.ids]
    for key, value in favor.items():
        try:
            i = table.index_of_name(str(key).strip())
        except KeyError:
            if str(key).strip() not in ids:
                raise SatSynthError(f"--favor: no class {key!r} in this generator (classes: "
                                    f"{', '.join(table.names)})") from None
            i = ids.index(str(key).strip())
        if not float(value) > 0:
            raise SatSynthError(f"--favor {key}: the factor must be positive, got {value}")
        factors[i] = float(value)
    return factors


def generate(model: Any, cfg: GeneratorConfig, count: int, first: int = 0, sampler: str = "dpm",
             steps: int = 20, seed: int = 0, device: Any = "cpu", on_step: Any = None,
             conditions: np.ndarray | None = None, cond_input: Any = None
             ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Sample ``count`` pairs. Returns (images (N,C,S,S) float32 in [-1,1], labels (N,S,S) uint8
    class indices, invalid-code pixel count, UNet evaluations per pair). A class-share-conditioned
    model needs ``conditions``: the (N, K) class shares asked of each sample. ``cond_input``: input
    channels concatenated to the noisy pair at every step (an upsampler's low-resolution pair)."""
    import torch

    from satsynth.generator.model import sampler_scheduler

    cond = None
    if cfg.condition == "class-shares":
        if conditions is None or np.shape(conditions) != (count, cfg.num_classes):
            raise SatSynthError(f"this generator is conditioned on class shares: give {count} "
                                f"share vectors of {cfg.num_classes} classes")
        cond = torch.as_tensor(np.asarray(conditions), dtype=torch.float32, device=device)

    sch = sampler_scheduler(cfg, sampler)
    n_steps = sch.config.num_train_timesteps if sampler == "ddpm" else int(steps)
    if n_steps < 1:
        raise SatSynthError(f"--steps must be at least 1, got {steps}")
    sch.set_timesteps(n_steps, device=device)
    s = cfg.chip_size
    x = _noise(count, first, (cfg.channels, s, s), seed).to(device) * sch.init_noise_sigma
    g = torch.Generator(device=device).manual_seed(
        int(np.random.SeedSequence([seed, first, 7]).generate_state(1)[0]))
    extra = {"generator": g} if sampler == "ddpm" else {}
    with torch.inference_mode():
        for t in sch.timesteps:
            inp = sch.scale_model_input(x, t)
            if cond_input is not None:
                inp = torch.cat([inp, cond_input], 1)
            out = model(inp, t.to(device).expand(count), class_labels=cond).sample
            x = sch.step(out, t, x, **extra).prev_sample
            if on_step is not None:
                on_step()
    x = x.float().cpu()
    images = x[:, :cfg.bands].clamp(-1, 1).numpy()
    labels, invalid = LabelEncoding(cfg.encoding, cfg.num_classes).decode(x[:, cfg.bands:])
    return images, labels.numpy(), invalid, len(sch.timesteps)


def upsample_pairs(model: Any, cfg: UpsamplerConfig, base_cfg: GeneratorConfig, images: np.ndarray,
                   labels: np.ndarray, first: int = 0, sampler: str = "dpm", steps: int = 20,
                   seed: int = 0, device: Any = "cpu", on_step: Any = None
                   ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """High-resolution versions of low-resolution pairs from the base generator (images in the
    base's model space, labels as class indices): the cascade's second stage. Returns what
    :func:`generate` returns, at the upsampler's size. The upsampler's noise is a stream of its
    own, so each pair depends only on (seed, index)."""
    if base_cfg.normalization != cfg.normalization:  # trained on stores with other statistics
        images = cfg.normalization.to_model(base_cfg.normalization.from_model(images))
    cond = condition_input(cfg, images, labels).to(device)
    sr_seed = int(np.random.SeedSequence([seed, 0x5352]).generate_state(1)[0])
    return generate(model, cfg, len(images), first, sampler, steps, sr_seed, device,
                    on_step=on_step, cond_input=cond)


def _placement(cfg: GeneratorConfig, count: int) -> tuple[tuple[float, ...], dict[str, Any]]:
    """The first chip's transform of a grid just right of the source extent (see
    :func:`~satsynth.generator.synthetic_store.chip_grid`), and a description for the report."""
    s = cfg.chip_size
    px, py = (abs(float(v)) for v in (cfg.pixel_size or (1.0, 1.0)))
    cols = max(1, math.ceil(math.sqrt(count)))
    if cfg.source_extent:
        _, miny, maxx, maxy = cfg.source_extent
    else:
        miny = maxx = maxy = 0.0
    x0 = maxx + s * px  # one chip width of space between the source and the synthetic grid
    first = (px, 0.0, x0, 0.0, -py, maxy) if cfg.y_up else (px, 0.0, x0, 0.0, py, miny)
    info = {"columns": cols, "rows": math.ceil(count / cols),
            "origin": [x0, maxy if cfg.y_up else miny],
            "source_extent": cfg.source_extent, "pixel_size": [px, py],
            "georeferenced": cfg.crs is not None}
    if cfg.crs is None:
        info["note"] = ("the source has no georeference: chips are placed in the source's pixel "
                        "coordinates, beside its extent, without a CRS")
    return first, info


@dataclass
class SampleStats:
    """What sampling measured, for the report."""

    invalid: int = 0  # pixels whose label code decodes to no class
    evals: int = 0  # UNet evaluations per pair
    cond_tv: float = 0.0  # sum over pairs of the TV distance between asked and drawn shares
    seconds: float = 0.0


@dataclass
class SynthesisRun:
    """A synthesis ready to sample (:func:`load_synthesis`): the models, what is asked of them
    and the provenance written with every pair."""

    model_dir: Path
    model: Any
    cfg: GeneratorConfig
    geo: Any  # the output's size and georeference: the upsampler's config in a cascade
    sr_model: Any
    upsampler: Path | None
    procs: Processes
    count: int
    sampler: str
    steps: int
    seed: int
    batch_size: int
    favor: dict[str, float] | None
    conditions: np.ndarray | None
    model_sha: str
    upsampler_sha: str | None = None

    @property
    def model_id(self) -> str:
        return self.cfg.model_id or self.model_sha

    @property
    def n_steps(self) -> int:
        return 1000 if self.sampler == "ddpm" else self.steps

    def placement(self) -> tuple[tuple[float, ...], dict[str, Any]]:
        return _placement(self.geo, self.count)

    def meta(self) -> StoreMeta:
        """The synthetic store's metadata (``dataset.json``)."""
        cfg, geo, md = self.cfg, self.geo, str(self.model_dir.resolve())
        extra = {"model_dir": md, "model_id": self.model_id, "weights_sha256": self.model_sha,
                 "model_step": cfg.step, "seed": self.seed, "sampler": self.sampler,
                 "steps": self.steps if self.sampler != "ddpm" else None,
                 "favor": self.favor or None}
        if self.sr_model is not None:
            extra.update(upsampler_dir=str(self.upsampler.resolve()), upsampler_id=geo.model_id,
                         upsampler_step=geo.step, upsampler_sha256=self.upsampler_sha)
        return StoreMeta(classes=cfg.classes, bands=cfg.bands, dtype=cfg.dtype,
                         chip_size=geo.chip_size, normalizer=geo.normalization, crs=cfg.crs,
                         pixel_size=tuple(geo.pixel_size) if geo.pixel_size else None,
                         sources=[{"image": "images.vrt", "label": "labels.vrt",
                                   "synthetic": True, "model": md}],
                         synthetic=True, extra=extra)

    def tags(self) -> dict[str, str]:
        """The GeoTIFF tags every pair of this run carries."""
        tags = {"SATSYNTH_SYNTHETIC": "yes", "SATSYNTH_MODEL_ID": self.model_id,
                "SATSYNTH_MODEL_SHA256": self.model_sha, "SATSYNTH_SEED": str(self.seed),
                "SATSYNTH_STEP": str(self.cfg.step), "SATSYNTH_SAMPLER": self.sampler}
        if self.sr_model is not None:
            tags.update(SATSYNTH_UPSAMPLER_ID=self.geo.model_id,
                        SATSYNTH_UPSAMPLER_STEP=str(self.geo.step))
        return tags

    def real_shares(self) -> np.ndarray:
        """The real training labels' class shares (zeros: unknown)."""
        k = self.cfg.num_classes
        return np.asarray(self.cfg.real_class_shares or [0.0] * k, dtype=np.float64)

    def report(self, stats: SampleStats) -> dict[str, Any]:
        """``report.json``'s sampling entries (``tv_distance`` and ``classes`` are the
        writer's)."""
        from satsynth.generator.report import class_shares, tv_distance

        cfg, geo, cond, s = self.cfg, self.geo, self.conditions, self.geo.chip_size
        real = self.real_shares()
        return {
            "count": self.count, "sampler": self.sampler, "steps": self.n_steps, "seed": self.seed,
            "model_id": self.model_id, "model_step": cfg.step, "weights_sha256": self.model_sha,
            "chip_size": s,
            "upsampler": {"dir": str(self.upsampler.resolve()), "id": geo.model_id,
                          "step": geo.step, "base_size": cfg.chip_size,
                          "factor": s // cfg.chip_size}
            if self.sr_model is not None else None,
            "unet_evals_per_pair": stats.evals, "seconds": round(stats.seconds, 3),
            "pairs_per_s": round(self.count / max(stats.seconds, 1e-9), 4),
            "device": str(self.procs.device), "processes": self.procs.world,
            "tv_distance": None, "condition": cfg.condition, "favor": self.favor or None,
            "asked_class_shares": [round(float(v), 6) for v in class_shares(cond.sum(0))]
            if cond is not None else None,
            "conditions_tv_distance": round(tv_distance(real, cond.sum(0)), 5)
            if cond is not None and real.sum() > 0 else None,
            "per_sample_condition_tv": round(stats.cond_tv / self.count, 5)
            if cond is not None else None,
            "invalid_codes": int(stats.invalid),
            "invalid_code_share": float(stats.invalid / max(self.count * s * s, 1)),
            "classes": [], "placement": self.placement()[1],
        }


def load_synthesis(model_dir: str | Path, count: int, out: str | Path,
                   sampler: str | None = SynthesizeFields.sampler,
                   steps: int = SynthesizeFields.steps, seed: int = SynthesizeFields.seed,
                   device: str = SynthesizeFields.device,
                   batch_size: int = SynthesizeFields.batch_size,
                   favor: dict[str, float] | None = None, upsampler: str | Path | None = None,
                   inputs: tuple[str | Path, ...] = ()) -> SynthesisRun:
    """Check the options and the output, and load the models of a synthesis.

    Args:
        model_dir, count, out, sampler, steps, seed, device, batch_size, favor, upsampler: as
            :func:`synthesize` takes them.
        inputs: further inputs of the run that ``out`` must not be (a scoring segmenter).

    Returns:
        The run, ready for :func:`sample_pairs`.
    """
    from satsynth.checkpoint import model_fingerprint
    from satsynth.generator.model import SAMPLERS, load_conditions, load_generator

    if sampler is not None and sampler not in SAMPLERS:
        raise SatSynthError(f"unknown sampler {sampler!r}: use {', '.join(SAMPLERS)}")
    if count < 1:
        raise SatSynthError(f"--count must be at least 1, got {count}")
    if batch_size < 1:
        raise SatSynthError(f"--batch-size must be at least 1, got {batch_size}")
    check_output(out, "synthetic", inputs=[model_dir, upsampler, *inputs])
    procs = processes(device)  # one, or those of torchrun / accelerate launch: shares of batches
    model_dir = Path(model_dir)
    model, cfg = load_generator(model_dir, procs.device)
    if sampler is None:
        sampler = default_sampler(cfg.training or {})
        log.info("sampler: %s (the default for this model's recipe)", sampler)
    geo, sr_model, sr_sha = cfg, None, None
    if upsampler is not None:
        upsampler = Path(upsampler)
        sr_model, geo = load_upsampler(upsampler, procs.device)
        check_cascade(cfg, geo, upsampler)
        sr_sha = model_fingerprint(upsampler, "sha256", "ema.safetensors", 16)
    if favor and cfg.condition != "class-shares":
        raise SatSynthError("--favor needs a generator trained with --condition class-shares",
                            model_dir)
    conditions = draw_conditions(load_conditions(model_dir), count, seed,
                                 favor_factors(favor, cfg.classes)) \
        if cfg.condition == "class-shares" else None
    if procs.distributed and batch_size_for(count, batch_size, procs.world) < batch_size:
        batch_size = batch_size_for(count, batch_size, procs.world)
        log.info("--batch-size %d so that each of the %d processes samples pairs", batch_size,
                 procs.world)
    return SynthesisRun(model_dir, model, cfg, geo, sr_model, upsampler, procs, count, sampler,
                        steps, seed, batch_size, favor, conditions,
                        model_fingerprint(model_dir, "sha256", "ema.safetensors", 16), sr_sha)


def _sample_batch(run: SynthesisRun, bi: int, bar: Any) -> Batch:
    """The pairs of batch ``bi`` (noise and conditions depend only on their indices)."""
    first = bi * run.batch_size
    n = min(run.batch_size, run.count - first)
    asked = run.conditions[first:first + n] if run.conditions is not None else None
    msg = f"batch {bi + 1}/{math.ceil(run.count / run.batch_size)}"
    dev = run.procs.device

    def tick() -> None:
        bar.update(run.procs.world, message=msg)  # the main process speaks for all

    imgs, labs, inv, evals = generate(run.model, run.cfg, n, first, run.sampler, run.steps,
                                      run.seed, dev, on_step=tick, conditions=asked)
    if run.sr_model is not None:  # the cascade: the same pairs at the upsampler's size
        imgs, labs, inv, sr_evals = upsample_pairs(run.sr_model, run.geo, run.cfg, imgs, labs,
                                                   first, run.sampler, run.steps, run.seed, dev,
                                                   tick)
        evals += sr_evals
    return imgs, labs, inv, evals


def sample_pairs(run: SynthesisRun, out: Path,
                 on_pair: Callable[[int, np.ndarray, np.ndarray], Any]) -> SampleStats:
    """Sample the run's pairs in batches (each process of a distributed run its share).

    Args:
        run: from :func:`load_synthesis`.
        out: the output folder (a distributed run's scratch folder goes beside it).
        on_pair: called on the main process as ``on_pair(index, image, label)`` for every pair
            in index order: the image (C, S, S) in the source dtype, the label (S, S) class
            indices (255: undecided).

    Returns:
        What sampling measured (on the main process; empty on the others).
    """
    procs, k = run.procs, run.cfg.num_classes
    batches = math.ceil(run.count / run.batch_size)
    total = batches * run.n_steps * (1 if run.sr_model is None else 2)
    stats = SampleStats()
    t0 = time.monotonic()
    with (procs.scratch(out, "pairs") if procs.distributed else nullcontext()) as scratch, \
            procs.progress_on_main(), \
            progress.task("synthesize", total=total, unit="step") as bar:
        for bi, (imgs, labs, inv, evals) in enumerate(sampled_batches(
                procs, batches, lambda b: _sample_batch(run, b, bar), scratch)):
            first = bi * run.batch_size
            stats.invalid += inv
            stats.evals = evals
            if run.conditions is not None:
                got = np.stack([np.bincount(lab.ravel(), minlength=k)[:k] for lab in labs])
                shares = got / np.maximum(got.sum(1, keepdims=True), 1)  # of decided pixels
                asked = run.conditions[first:first + len(labs)]
                stats.cond_tv += float(0.5 * np.abs(shares - asked).sum())
            src = run.geo.normalization.from_model(imgs)
            for j in range(len(labs)):
                on_pair(first + j, src[j], labs[j])
    stats.seconds = time.monotonic() - t0
    return stats


def synthesize(model_dir: str | Path, count: int, out: str | Path,
               sampler: str | None = SynthesizeFields.sampler, steps: int = SynthesizeFields.steps,
               seed: int = SynthesizeFields.seed, device: str = SynthesizeFields.device,
               batch_size: int = SynthesizeFields.batch_size,
               favor: dict[str, float] | None = None, upsampler: str | Path | None = None
               ) -> dict[str, Any]:
    """Sample georeferenced image-mask pairs from a generator folder into a synthetic folder
    (:mod:`~satsynth.generator.synthetic_store`).

    Args:
        model_dir: a generator folder (``train-generator``).
        count: the pairs to sample.
        out: the synthetic folder to write (replaced when done).
        sampler: ``ddpm``, ``ddim`` or ``dpm``; None: the model's recipe's.
        steps: sampling steps of ``ddim``/``dpm``.
        seed: each pair depends only on (seed, its index).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: pairs sampled together.
        favor: {class name or id: factor}: asks a class-share-conditioned generator for more
            (factor > 1) or less of some classes (see :func:`draw_conditions`).
        upsampler: a folder from ``train-upsampler``: the cascade samples each pair at the
            generator's size, then at the upsampler's, which is the size (and pixel size)
            written.

    Returns:
        The outputs: ``synthetic`` (the folder), its mosaics, style, report and previews, and
        ``tv_distance`` to the real class shares (None: unknown).
    """
    out = Path(out)
    run = load_synthesis(model_dir, count, out, sampler, steps, seed, device, batch_size, favor,
                         upsampler)
    if not run.procs.is_main:  # another process of a distributed run: its share of the batches
        sample_pairs(run, out, lambda *_: None)
        run.procs.barrier()  # until the main process has written the output folder
        return {"synthetic": str(out), "process": run.procs.rank, "processes": run.procs.world}
    transforms = chip_grid(run.placement()[0], count, run.geo.chip_size)
    with SyntheticStoreWriter(out, run.meta(), count, run.tags()) as w:
        stats = sample_pairs(run, out, lambda i, image, label: w.add(image, label, transforms[i]))
        tv = w.finish(run.report(stats), run.real_shares())
    run.procs.barrier()  # the other processes of a distributed run return now
    log.info("synthesized %d pairs (TV distance to the real class shares: %s)", count,
             f"{tv:.3f}" if tv is not None else "n/a")
    return {**w.outputs(), "tv_distance": tv}
