"""Sampling image-mask pairs from a trained generator (``satsynth synthesize``).

The output folder is a chip store (``meta.synthetic = True``) that the segmenter reads like real
chips, plus, for a GIS analyst: one GeoTIFF per image and per label chip laid out on a grid just
beside the source's extent at true scale, VRT mosaics of both, a QML style for the labels, a
report (class shares vs the real labels, TV distance, invalid codes), a class-share bar chart and
a PNG grid of sample pairs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from satsynth import progress
from satsynth.contract import SynthesizeFields
from satsynth.data.classes import IGNORE_INDEX, ClassTable, write_qml
from satsynth.data.store import ChipStoreWriter, StoreMeta
from satsynth.distributed import processes
from satsynth.errors import SatSynthError
from satsynth.generator.config import GeneratorConfig, default_sampler
from satsynth.generator.encoding import LabelEncoding
from satsynth.generator.shards import Batch, batch_size_for, sampled_batches
from satsynth.generator.upsampler import (
    UpsamplerConfig,
    check_cascade,
    condition_input,
    load_upsampler,
)
from satsynth.io import write_json
from satsynth.outputs import check_output

log = logging.getLogger("satsynth")

GRID_SAMPLES = 16
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
              "uint32": "UInt32", "int32": "Int32", "float32": "Float32", "float64": "Float64"}


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


def _grid_transforms(cfg: GeneratorConfig, count: int) -> tuple[list[tuple[float, ...]], dict[str, Any]]:
    """Chip transforms on a grid just right of the source extent, and a description."""
    s = cfg.chip_size
    px, py = (abs(float(v)) for v in (cfg.pixel_size or (1.0, 1.0)))
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / cols)
    if cfg.source_extent:
        _, miny, maxx, maxy = cfg.source_extent
    else:
        miny = maxx = maxy = 0.0
    x0 = maxx + s * px  # one chip width of space between the source and the synthetic grid
    ts = []
    for i in range(count):
        r, c = divmod(i, cols)
        if cfg.y_up:
            ts.append((px, 0.0, x0 + c * s * px, 0.0, -py, maxy - r * s * py))
        else:
            ts.append((px, 0.0, x0 + c * s * px, 0.0, py, miny + r * s * py))
    info = {"columns": cols, "rows": rows, "origin": [x0, maxy if cfg.y_up else miny],
            "source_extent": cfg.source_extent, "pixel_size": [px, py],
            "georeferenced": cfg.crs is not None}
    if cfg.crs is None:
        info["note"] = ("the source has no georeference: chips are placed in the source's pixel "
                        "coordinates, beside its extent, without a CRS")
    return ts, info


def _crs_wkt(crs: str | None) -> str | None:
    if not crs:
        return None
    from rasterio.crs import CRS

    return CRS.from_user_input(crs).to_wkt()


def _write_vrt(path: Path, files: list[str], transforms: list[tuple[float, ...]],
               cfg: GeneratorConfig, bands: int, dtype: str, table: ClassTable | None) -> Path:
    """A VRT mosaic of chips on a regular grid (written as XML; GDAL's BuildVRT is not needed)."""
    s = cfg.chip_size
    a, _, c0, _, e, f0 = transforms[0]
    xs = [t[2] for t in transforms]
    ys = [t[5] for t in transforms]
    minx = min(xs)
    top = max(ys) if e < 0 else min(ys)
    width = round((max(xs) - minx) / a) + s
    height = round(abs(max(ys) - min(ys)) / abs(e)) + s
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    wkt = _crs_wkt(cfg.crs)
    if wkt:
        lines.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(wkt)}</SRS>')
    lines.append(f"  <GeoTransform>{minx!r}, {a!r}, 0.0, {top!r}, 0.0, {e!r}</GeoTransform>")
    gdt = GDAL_TYPES.get(dtype, "Float32")
    for b in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdt}" band="{b}">')
        if table is not None:
            lines.append(f"    <NoDataValue>{IGNORE_INDEX}</NoDataValue>")
            lines.append("    <ColorInterp>Palette</ColorInterp>")
            lines.append("    <ColorTable>")
            cmap = table.colormap()
            for v in range(256):
                r, g, bl, al = cmap.get(v, (0, 0, 0, 0))
                lines.append(f'      <Entry c1="{r}" c2="{g}" c3="{bl}" c4="{al}"/>')
            lines.append("    </ColorTable>")
        elif bands >= 3 and b <= 3:
            lines.append(f"    <ColorInterp>{('Red', 'Green', 'Blue')[b - 1]}</ColorInterp>")
        for name, t in zip(files, transforms, strict=True):
            xoff = round((t[2] - minx) / a)
            yoff = round(abs(t[5] - top) / abs(e))
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SourceProperties RasterXSize="{s}" RasterYSize="{s}" DataType="{gdt}" '
                f'BlockXSize="{s}" BlockYSize="{s}"/>',
                f'      <SrcRect xOff="0" yOff="0" xSize="{s}" ySize="{s}"/>',
                f'      <DstRect xOff="{xoff}" yOff="{yoff}" xSize="{s}" ySize="{s}"/>',
                "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def synthesize(model_dir: str | Path, count: int, out: str | Path,
               sampler: str | None = SynthesizeFields.sampler, steps: int = SynthesizeFields.steps,
               seed: int = SynthesizeFields.seed, device: str = SynthesizeFields.device,
               batch_size: int = SynthesizeFields.batch_size,
               favor: dict[str, float] | None = None, upsampler: str | Path | None = None
               ) -> dict[str, Any]:
    """Sample ``count`` georeferenced image-mask pairs from a generator folder into ``out``.
    ``favor`` ({class name or id: factor}) asks a class-share-conditioned generator for more
    (factor > 1) or less of some classes (see :func:`draw_conditions`). ``upsampler`` (a folder
    from ``train-upsampler``) runs the cascade: each pair is sampled at the generator's size,
    then at the upsampler's, which is the size (and pixel size) written."""
    import rasterio
    from rasterio.transform import Affine

    from satsynth.generator.model import SAMPLERS, load_conditions, load_generator
    from satsynth.generator.report import (
        class_shares,
        plot_class_shares,
        sample_grid,
        tv_distance,
    )

    if sampler is not None and sampler not in SAMPLERS:
        raise SatSynthError(f"unknown sampler {sampler!r}: use {', '.join(SAMPLERS)}")
    if count < 1:
        raise SatSynthError(f"--count must be at least 1, got {count}")
    if batch_size < 1:
        raise SatSynthError(f"--batch-size must be at least 1, got {batch_size}")
    check_output(out, "synthetic", inputs=[model_dir, upsampler])
    procs = processes(device)  # one, or those of torchrun / accelerate launch: shares of batches
    dev = procs.device
    model_dir = Path(model_dir)
    model, cfg = load_generator(model_dir, dev)
    if sampler is None:
        sampler = default_sampler(cfg.training or {})
        log.info("sampler: %s (the default for this model's recipe)", sampler)
    geo = cfg  # the output's size and georeference: the upsampler's in a cascade
    sr_model = None
    if upsampler is not None:
        upsampler = Path(upsampler)
        sr_model, geo = load_upsampler(upsampler, dev)
        check_cascade(cfg, geo, upsampler)
    out = Path(out)
    table = cfg.classes
    norm = geo.normalization
    k = table.num_classes
    lut = table.index_to_id_lut()
    model_sha = _sha256(model_dir / "ema.safetensors")[:16]
    model_id = cfg.model_id or model_sha
    transforms, placement = _grid_transforms(geo, count)
    if favor and cfg.condition != "class-shares":
        raise SatSynthError("--favor needs a generator trained with --condition class-shares",
                            model_dir)
    conditions = draw_conditions(load_conditions(model_dir), count, seed,
                                 favor_factors(favor, table)) \
        if cfg.condition == "class-shares" else None
    cond_tv = 0.0
    crs_wkt = _crs_wkt(cfg.crs)
    extra = {"model_dir": str(model_dir.resolve()), "model_id": model_id,
             "weights_sha256": model_sha, "model_step": cfg.step, "seed": seed,
             "sampler": sampler, "steps": steps if sampler != "ddpm" else None,
             "favor": favor or None}
    if sr_model is not None:
        extra.update(upsampler_dir=str(upsampler.resolve()), upsampler_id=geo.model_id,
                     upsampler_step=geo.step,
                     upsampler_sha256=_sha256(upsampler / "ema.safetensors")[:16])
    meta = StoreMeta(classes=table, bands=cfg.bands, dtype=cfg.dtype, chip_size=geo.chip_size,
                     normalizer=norm, crs=cfg.crs,
                     pixel_size=tuple(geo.pixel_size) if geo.pixel_size else None,
                     sources=[{"image": "images.vrt", "label": "labels.vrt", "synthetic": True,
                               "model": str(model_dir.resolve())}],
                     synthetic=True, extra=extra)
    tags = {"SATSYNTH_SYNTHETIC": "yes", "SATSYNTH_MODEL_ID": model_id,
            "SATSYNTH_MODEL_SHA256": model_sha, "SATSYNTH_SEED": str(seed),
            "SATSYNTH_STEP": str(cfg.step), "SATSYNTH_SAMPLER": sampler}
    if sr_model is not None:
        tags.update(SATSYNTH_UPSAMPLER_ID=geo.model_id, SATSYNTH_UPSAMPLER_STEP=str(geo.step))
    counts = np.zeros(k, np.int64)
    invalid = 0
    evals = 0
    grid_imgs, grid_labs = [], []
    names: list[str] = []
    s = geo.chip_size
    if procs.distributed and batch_size_for(count, batch_size, procs.world) < batch_size:
        batch_size = batch_size_for(count, batch_size, procs.world)
        log.info("--batch-size %d so that each of the %d processes samples pairs", batch_size,
                 procs.world)
    batches = math.ceil(count / batch_size)
    n_steps = 1000 if sampler == "ddpm" else steps
    stages = 1 if sr_model is None else 2
    t0 = time.monotonic()

    def sample(bi: int) -> Batch:
        """The pairs of batch ``bi`` (noise and conditions depend only on their indices)."""
        first = bi * batch_size
        n = min(batch_size, count - first)
        asked = conditions[first:first + n] if conditions is not None else None

        def tick(msg: str = f"batch {bi + 1}/{batches}") -> None:
            bar.update(procs.world, message=msg)  # the main process speaks for all

        imgs, labs, inv, evals = generate(model, cfg, n, first, sampler, steps, seed, dev,
                                          on_step=tick, conditions=asked)
        if sr_model is not None:  # the cascade: the same pairs at the upsampler's size
            imgs, labs, inv, sr_evals = upsample_pairs(sr_model, geo, cfg, imgs, labs, first,
                                                       sampler, steps, seed, dev, tick)
            evals += sr_evals
        return imgs, labs, inv, evals

    total = batches * n_steps * stages
    if not procs.is_main:  # another process of a distributed run: its share of the batches
        with procs.scratch(out, "pairs") as scratch, procs.progress_on_main(), \
                progress.task("synthesize", total=total, unit="step") as bar:
            for _ in sampled_batches(procs, batches, sample, scratch):
                pass
        procs.barrier()  # until the main process has written the output folder
        return {"synthetic": str(out), "process": procs.rank, "processes": procs.world}
    with (procs.scratch(out, "pairs") if procs.distributed else nullcontext()) as scratch, \
            ChipStoreWriter(out, meta, {"train": count}) as w, \
            progress.task("synthesize", total=total, unit="step") as bar:
        (w.tmp / "images").mkdir()
        (w.tmp / "labels").mkdir()
        for bi, (imgs, labs, inv, evals) in enumerate(  # noqa: B007 - evals goes in the report
                sampled_batches(procs, batches, sample, scratch)):
            first = bi * batch_size
            n = min(batch_size, count - first)
            asked = conditions[first:first + n] if conditions is not None else None
            invalid += inv
            got = np.stack([np.bincount(lab.ravel(), minlength=k)[:k] for lab in labs])
            counts += got.sum(0)
            if asked is not None:
                shares = got / np.maximum(got.sum(1, keepdims=True), 1)  # of decided pixels
                cond_tv += float(0.5 * np.abs(shares - asked).sum())
            if sum(len(g) for g in grid_imgs) < GRID_SAMPLES:
                grid_imgs.append(imgs[:GRID_SAMPLES])
                grid_labs.append(labs[:GRID_SAMPLES])
            src = norm.from_model(imgs)
            for j in range(n):
                i = first + j
                t = transforms[i]
                name = f"syn_{i:05d}.tif"
                names.append(name)
                w.add("train", src[j], labs[j], t, source=0)
                profile = {"driver": "GTiff", "width": s, "height": s, "transform": Affine(
                    t[0], t[1], t[2], t[3], t[4], t[5]), "crs": crs_wkt, "compress": "deflate"}
                with rasterio.open(w.tmp / "images" / name, "w", count=cfg.bands,
                                   dtype=cfg.dtype, **profile) as dst:
                    dst.write(src[j])
                    dst.update_tags(**tags, SATSYNTH_INDEX=str(i),
                                    TIFFTAG_IMAGEDESCRIPTION=f"SatSynth synthetic image {i}")
                with rasterio.open(w.tmp / "labels" / name, "w", count=1, dtype="uint8",
                                   nodata=IGNORE_INDEX, **profile) as dst:
                    dst.write(lut[labs[j]][None])
                    dst.write_colormap(1, table.colormap())
                    dst.update_tags(**tags, SATSYNTH_INDEX=str(i),
                                    TIFFTAG_IMAGEDESCRIPTION=f"SatSynth synthetic labels {i}")
        elapsed = time.monotonic() - t0
        _write_vrt(w.tmp / "images.vrt", [f"images/{n}" for n in names], transforms, geo,
                   cfg.bands, cfg.dtype, None)
        _write_vrt(w.tmp / "labels.vrt", [f"labels/{n}" for n in names], transforms, geo, 1,
                   "uint8", table)
        write_qml(w.tmp / "labels.qml", table)
        real = np.asarray(cfg.real_class_shares or [0.0] * k, dtype=np.float64)
        syn = class_shares(counts)
        tv = tv_distance(real, counts) if real.sum() > 0 else None
        plot_class_shares(class_shares(real), syn, table, w.tmp / "class_shares.png", tv)
        gi = np.concatenate(grid_imgs)[:GRID_SAMPLES]
        gl = np.concatenate(grid_labs)[:GRID_SAMPLES]
        sample_grid(gi, gl, table, w.tmp / "samples.png")
        report = {
            "count": count, "sampler": sampler, "steps": n_steps, "seed": seed,
            "model_id": model_id, "model_step": cfg.step, "weights_sha256": model_sha,
            "chip_size": s,
            "upsampler": {"dir": extra["upsampler_dir"], "id": geo.model_id, "step": geo.step,
                          "base_size": cfg.chip_size, "factor": s // cfg.chip_size}
            if sr_model is not None else None,
            "unet_evals_per_pair": evals, "seconds": round(elapsed, 3),
            "pairs_per_s": round(count / max(elapsed, 1e-9), 4),
            "device": str(dev), "processes": procs.world,
            "tv_distance": round(tv, 5) if tv is not None else None,
            "condition": cfg.condition, "favor": favor or None,
            "asked_class_shares": [round(float(v), 6) for v in class_shares(conditions.sum(0))]
            if conditions is not None else None,
            "conditions_tv_distance": round(tv_distance(real, conditions.sum(0)), 5)
            if conditions is not None and real.sum() > 0 else None,
            "per_sample_condition_tv": round(cond_tv / count, 5)
            if conditions is not None else None,
            "invalid_codes": int(invalid),
            "invalid_code_share": float(invalid / max(count * s * s, 1)),
            "classes": [{"index": i, "id": c.id, "name": c.name,
                         "real_share": round(float(class_shares(real)[i]), 6),
                         "synthetic_share": round(float(syn[i]), 6)}
                        for i, c in enumerate(table.classes)],
            "placement": placement,
        }
        write_json(w.tmp / "report.json", report)
    procs.barrier()  # the other processes of a distributed run return now
    log.info("synthesized %d pairs (TV distance to the real class shares: %s)", count,
             f"{tv:.3f}" if tv is not None else "n/a")
    return {"synthetic": str(out), "images_vrt": str(out / "images.vrt"),
            "labels_vrt": str(out / "labels.vrt"), "labels_qml": str(out / "labels.qml"),
            "report": str(out / "report.json"), "grid": str(out / "samples.png"),
            "class_shares_png": str(out / "class_shares.png"), "tv_distance": tv}
