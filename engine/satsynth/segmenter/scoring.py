"""How good is a synthetic pair? Pair consistency, filtering and an optional FID/KID.

*Pair consistency*: a segmenter trained on real chips segments each synthetic image; the pair's
score is the agreement of that prediction with the pair's own mask (the pair's mIoU over the
classes in the mask or the prediction, and its pixel accuracy; torchmetrics). A pair whose image
shows what its mask says scores high; a pair whose mask does not match its image scores low.

``score_pairs`` stores the scores in the synthetic store (``train.scores.npy``, read back by
:class:`~satsynth.data.store.ChipStore`), as attributes of its footprints (``chips.gpkg``: miou,
pixel_accuracy, rank, to sort in QGIS), in ``report.json`` and as a PNG of the most and least
consistent pairs. ``filter_pairs`` writes a new synthetic store with the most consistent pairs,
complete like one made by ``synthesize`` (GeoTIFF chips re-laid on a compact grid in rank order,
VRT mosaics, footprints, report), so ``train-segmenter`` takes it as it is.

FID/KID need Inception weights that SatSynth never downloads: they are computed only when the
user gives a local weights file (``--fid-weights``), and labelled with the feature extractor used.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import IGNORE_INDEX, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.sources import refuse_repeats
from satsynth.data.store import (
    SCORE_COLUMNS,
    ChipSplit,
    ChipStore,
    ChipStoreWriter,
    score_ranks,
    write_scored_index,
)
from satsynth.errors import SatSynthError
from satsynth.io import atomic_dir, atomic_path, read_json, write_json
from satsynth.outputs import check_output

log = logging.getLogger("satsynth")

#: The PNG of the most and least consistent pairs written beside the synthetic chips.
SCORED_GRID = "pairs_by_score.png"
#: Pairs shown at each end of that PNG.
GRID_PAIRS = 8
#: Real chips read for FID/KID at most (features of a random subset of the training chips).
FID_MAX_REAL = 2048


# --------------------------------------------------------------------------------------------
# the scores


def pair_scores(model: Any, chips: ChipSplit, normalizer: Normalizer, num_classes: int,
                batch_size: int = 32, device: Any = "cpu", stage: str = "score-pairs"
                ) -> np.ndarray:
    """(N, 2) float32: each chip's mIoU and pixel accuracy of ``model``'s prediction against the
    chip's mask (``SCORE_COLUMNS``). Unlabeled mask pixels are left out; a chip without labeled
    pixels scores NaN."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy
    from torchmetrics.functional.segmentation import mean_iou

    from satsynth.segmenter.model import forward_logits

    n = len(chips)
    out = np.full((n, len(SCORE_COLUMNS)), np.nan, np.float32)
    k = int(num_classes)
    model.eval()
    with torch.inference_mode():
        for s in progress.track(range(0, n, batch_size), stage, unit="batch"):
            e = min(s + batch_size, n)
            x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[s:e]))).to(device)
            y = torch.from_numpy(np.asarray(chips.labels[s:e]).astype(np.int64)).to(device)
            pred = forward_logits(model, x).argmax(1)
            ignored = y == IGNORE_INDEX
            # ignored pixels become an extra class K in both, then K's IoU is dropped
            iou = mean_iou(pred.masked_fill(ignored, k), y.masked_fill(ignored, k),
                           num_classes=k + 1, per_class=True, input_format="index")[:, :k]
            present = iou >= 0
            miou = (iou.clamp(min=0) * present).sum(1) / present.sum(1).clamp(min=1)
            acc = multiclass_accuracy(pred, y, num_classes=k, average="micro",
                                      multidim_average="samplewise", ignore_index=IGNORE_INDEX)
            empty = (~ignored).sum((1, 2)) == 0
            miou[empty] = float("nan")
            acc = acc.float().masked_fill(empty, float("nan"))
            out[s:e, 0] = miou.cpu().numpy()
            out[s:e, 1] = acc.cpu().numpy()
    return out


def summarize_scores(scores: np.ndarray) -> dict[str, Any]:
    """Mean, quartiles and extremes of each score (NaN pairs counted apart)."""
    sc = np.asarray(scores, dtype=np.float64)
    summary: dict[str, Any] = {"pairs": int(len(sc)),
                               "unscored_pairs": int(np.isnan(sc[:, 0]).sum()) if len(sc) else 0}
    for j, name in enumerate(SCORE_COLUMNS):
        v = sc[:, j][~np.isnan(sc[:, j])] if len(sc) else np.zeros(0)
        if not len(v):
            summary[name] = None
            continue
        q = np.percentile(v, [0, 10, 25, 50, 75, 90, 100])
        summary[name] = {"mean": round(float(v.mean()), 5),
                         **{k: round(float(x), 5) for k, x in zip(
                             ("min", "p10", "p25", "median", "p75", "p90", "max"), q, strict=True)}}
    return summary


def _load_scorer(segmenter: str | Path, store: ChipStore, device: str) -> tuple[Any, Any, Any]:
    return load_scorer(segmenter, store.classes, store.meta.bands, store.meta.chip_size,
                       store.path, device)


def load_scorer(segmenter: str | Path, classes: ClassTable, bands: int, chip_size: int,
                where: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """The scoring segmenter ``(model, config, device)`` for pairs of ``classes``, ``bands`` and
    ``chip_size`` (those of the synthetic folder, or of the generator that will make them:
    ``synthesize --score-with`` checks before sampling); one line naming ``where`` otherwise."""
    from satsynth.device import resolve_device
    from satsynth.segmenter.model import check_chip_size, load_segmenter

    dev = resolve_device(device)
    model, cfg = load_segmenter(segmenter, dev)
    if [(c.id, c.name) for c in cfg.classes.classes] != [(c.id, c.name) for c in classes.classes]:
        raise SatSynthError(f"the pairs' classes {classes.names} differ from those of the "
                            f"segmenter {segmenter} ({cfg.classes.names})", where)
    if bands != cfg.in_channels:
        raise SatSynthError(f"the pairs have {bands} band(s), the segmenter "
                            f"{segmenter} expects {cfg.in_channels}", where)
    check_chip_size(model, chip_size, cfg.arch, cfg.encoder)
    return model, cfg, dev


@contextmanager
def _updated_copy(folder: Path) -> Iterator[Path]:
    """A copy of ``folder`` (hard links where possible) that replaces it when the block ends
    without an error. Files changed in the copy must be written as new files (atomic_path)."""
    with atomic_dir(folder) as tmp:
        try:
            shutil.copytree(folder, tmp, dirs_exist_ok=True, copy_function=os.link)
        except OSError:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        yield tmp


def score_pairs(synthetic: str | Path, segmenter: str | Path, device: str = "auto",
                batch_size: int = 32, fid_weights: str | Path | None = None,
                real: str | Path | None = None) -> dict[str, Any]:
    """Score every pair of the synthetic store ``synthetic`` with the real-trained
    ``segmenter``, in place (the folder is replaced as a whole when everything is written).
    With ``fid_weights`` (a local Inception file) also FID/KID against the real training chips of
    ``real`` (default: the segmenter's training dataset)."""
    syn_path = Path(synthetic)
    store = ChipStore(syn_path)
    if not store.has_split("train") or store.count("train") == 0:
        raise SatSynthError("the synthetic store holds no chips", syn_path)
    if not store.meta.synthetic:
        log.warning("%s is not marked synthetic; scoring its chips anyway", syn_path)
    model, cfg, dev = _load_scorer(segmenter, store, device)
    chips = store.split("train")
    realism = None
    if fid_weights is not None:  # first: a bad weights file fails before the longer scoring
        realism = fid_kid(store, _real_store(real, cfg, segmenter), weights=fid_weights,
                          device=dev)
    scores = pair_scores(model, chips, cfg.normalization, cfg.num_classes, batch_size, dev)
    summary = summarize_scores(scores)
    seg_info = {"segmenter": str(Path(segmenter).resolve()),
                "segmenter_val_miou": cfg.metrics.get("miou"),
                "columns": list(SCORE_COLUMNS), "summary": summary}
    order = np.argsort(score_ranks(scores))
    ends = np.unique(np.concatenate([order[:GRID_PAIRS], order[-GRID_PAIRS:]]))
    ends = ends[np.argsort(score_ranks(scores)[ends])]
    preds = _predict(model, chips, ends, cfg.normalization, dev)
    with _updated_copy(syn_path) as tmp:
        with atomic_path(tmp / "train.scores.npy") as f:
            np.save(f, scores.astype(np.float32))
        if (tmp / "chips.gpkg").is_file():
            with atomic_path(tmp / "chips.gpkg") as f:
                write_scored_index(syn_path / "chips.gpkg", f, "train", scores)
        store.meta.extra["pair_scores"] = seg_info
        if realism is not None:
            store.meta.extra["realism"] = realism
        write_json(tmp / "dataset.json", store.meta.to_dict())
        report = read_json(tmp / "report.json") if (tmp / "report.json").is_file() else {}
        report["pair_consistency"] = seg_info
        if realism is not None:
            report["realism"] = realism
        write_json(tmp / "report.json", report)
        plot_scored_pairs(store.normalizer.to_model(np.asarray(chips.images[ends])),
                          np.asarray(chips.labels[ends]), preds, scores[ends],
                          score_ranks(scores)[ends], len(scores), store.classes,
                          tmp / SCORED_GRID)
    m = summary["miou"]
    log.info("scored %d pairs with %s: pair mIoU mean %s, median %s", len(scores), segmenter,
             f"{m['mean']:.3f}" if m else "n/a", f"{m['median']:.3f}" if m else "n/a")
    outputs: dict[str, Any] = {
        "synthetic": str(syn_path), "scores": str(syn_path / "train.scores.npy"),
        "footprints": str(syn_path / "chips.gpkg"), "report": str(syn_path / "report.json"),
        "grid": str(syn_path / SCORED_GRID),
        "pair_miou_mean": m["mean"] if m else None,
        "pair_miou_median": m["median"] if m else None}
    if realism is not None:
        outputs.update(fid=realism["fid"], kid_mean=realism["kid_mean"])
    return outputs


def _predict(model: Any, chips: ChipSplit, idx: np.ndarray, normalizer: Normalizer,
             dev: Any) -> np.ndarray:
    import torch

    from satsynth.segmenter.model import forward_logits

    if not len(idx):
        return np.zeros((0, *chips.labels.shape[1:]), np.uint8)
    with torch.inference_mode():
        x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[idx]))).to(dev)
        return forward_logits(model, x).argmax(1).cpu().numpy().astype(np.uint8)


def plot_scored_pairs(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                      scores: np.ndarray, ranks: np.ndarray, total: int, table: ClassTable,
                      path: Path) -> Path:
    """PNG: each pair's image, its mask and the scoring segmenter's prediction, with the pair's
    rank and scores, best first (rows are the most and least consistent pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from satsynth.generator.report import to_display

    n = len(images)
    pal = np.vstack([table.palette_by_index()[:, :3], np.zeros((1, 3))]).astype(np.float32) / 255
    rgb = to_display(images)
    per_row = 4
    rows = max(1, math.ceil(n / per_row))
    fig, axes = plt.subplots(rows, per_row * 3, figsize=(per_row * 3 * 1.15, rows * 1.45),
                             dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def colour(lab: np.ndarray) -> np.ndarray:
        lab = np.asarray(lab, np.int64)
        return pal[np.where(lab == IGNORE_INDEX, len(pal) - 1, np.minimum(lab, len(pal) - 1))]

    for i in range(n):
        r, c = divmod(i, per_row)
        a_img, a_mask, a_pred = axes[r, 3 * c:3 * c + 3]
        a_img.imshow(rgb[i], interpolation="nearest")
        a_mask.imshow(colour(labels[i]), interpolation="nearest")
        a_pred.imshow(colour(preds[i]), interpolation="nearest")
        miou, acc = (float(v) for v in scores[i][:2])
        a_img.set_title(f"#{int(ranks[i])}/{total}", fontsize=7)
        a_mask.set_title(f"mask, mIoU {miou:.2f}" if not math.isnan(miou) else "mask",
                         fontsize=7)
        a_pred.set_title(f"segmenter, acc {acc:.2f}" if not math.isnan(acc) else "segmenter",
                         fontsize=7)
    fig.suptitle("Synthetic pairs by consistency (image | its mask | real-trained segmenter), "
                 "best first", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# filtering


def select_pairs(scores: np.ndarray, keep: float | None = None,
                 min_score: float | None = None) -> np.ndarray:
    """Indices of the pairs to keep, most consistent first: the top ``keep`` fraction (rounded
    up) and/or those whose mIoU is at least ``min_score``."""
    if keep is None and min_score is None:
        raise SatSynthError("say which pairs to keep: --keep FRACTION and/or --min-score S")
    if keep is not None and not 0 < keep <= 1:
        raise SatSynthError(f"--keep must be a fraction in (0, 1], got {keep}")
    if min_score is not None and not 0 <= min_score <= 1:
        raise SatSynthError(f"--min-score must be in [0, 1], got {min_score}")
    order = np.argsort(score_ranks(scores), kind="stable")
    if keep is not None:
        order = order[:max(1, math.ceil(keep * len(order)))]
    if min_score is not None:
        order = order[np.nan_to_num(np.asarray(scores)[order, 0], nan=-1.0) >= min_score]
    return order


def _scored(store: ChipStore) -> np.ndarray:
    scores = store.split("train").scores
    if scores is None:
        raise SatSynthError("these pairs are not scored yet: run 'satsynth score-pairs "
                            f"{store.path} --segmenter SEG_DIR' first", store.path)
    return np.asarray(scores)


def _compact_grid(first: np.ndarray, count: int, size: int) -> list[tuple[float, ...]]:
    """Chip transforms on a square-ish grid from the top-left chip transform ``first``."""
    a, b, c, d, e, f = (float(v) for v in first)
    cols = max(1, math.ceil(math.sqrt(count)))
    return [(a, b, c + (i % cols) * size * a, d, e, f + (i // cols) * size * e)
            for i in range(count)]


def _filtered_vrt(src: Path, dst: Path, files: list[str], transforms: list[tuple[float, ...]],
                  size: int) -> None:
    """The pool's mosaic ``src`` with one source per kept chip at its new place."""
    tree = ET.parse(src)
    root = tree.getroot()
    a, e = transforms[0][0], transforms[0][4]
    minx = min(t[2] for t in transforms)
    top = max(t[5] for t in transforms) if e < 0 else min(t[5] for t in transforms)
    cols = round((max(t[2] for t in transforms) - minx) / a) + size
    rows = round(abs(max(t[5] for t in transforms) - min(t[5] for t in transforms)) / abs(e)) + size
    root.set("rasterXSize", str(cols))
    root.set("rasterYSize", str(rows))
    gt = root.find("GeoTransform")
    if gt is not None:
        gt.text = f"{minx!r}, {a!r}, 0.0, {top!r}, 0.0, {e!r}"
    for band in root.findall("VRTRasterBand"):
        sources = band.findall("SimpleSource")
        if not sources:
            raise SatSynthError("the mosaic has no chip sources", src)
        template = sources[0]
        for s in sources:
            band.remove(s)
        for name, t in zip(files, transforms, strict=True):
            s = ET.fromstring(ET.tostring(template))
            s.find("SourceFilename").text = name  # type: ignore[union-attr]
            rect = s.find("DstRect")
            rect.set("xOff", str(round((t[2] - minx) / a)))  # type: ignore[union-attr]
            rect.set("yOff", str(round(abs(t[5] - top) / abs(e))))  # type: ignore[union-attr]
            band.append(s)
    ET.indent(tree, "  ")
    tree.write(dst, encoding="unicode")


def filter_pairs(synthetic: str | Path | list[str | Path], out: str | Path,
                 keep: float | None = None, min_score: float | None = None,
                 scores: list[np.ndarray] | None = None, note: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the most consistent pairs of one or more scored synthetic stores into ``out``: a
    synthetic store like one ``synthesize`` writes (GeoTIFF chips on a compact grid at the first
    pool's origin, most consistent first; VRT mosaics; footprints with the scores; report).
    ``scores`` (one array per store) replaces the stored scores (e.g. those of another
    segmenter); ``note`` is added to the filter record (``dataset.json`` extra and report)."""
    import rasterio
    from rasterio.transform import Affine

    from satsynth.generator.report import class_shares, plot_class_shares, sample_grid, tv_distance

    paths = [Path(p) for p in ([synthetic] if isinstance(synthetic, (str, Path)) else synthetic)]
    if not paths:
        raise SatSynthError("no synthetic folder to filter")
    refuse_repeats(paths, "filter-pairs")
    check_output(out, "synthetic", inputs=paths)
    stores = [ChipStore(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        if (s.meta.chip_size, s.meta.bands, s.classes.names) != (
                first.meta.chip_size, first.meta.bands, first.classes.names):
            raise SatSynthError(f"cannot merge pairs of other size, bands or classes than "
                                f"{first.path}", s.path)
    splits = [s.split("train") for s in stores]
    if scores is None:
        scores = [_scored(s) for s in stores]
    elif [len(x) for x in scores] != [len(x) for x in splits]:
        raise SatSynthError("one score per pair is needed for each synthetic folder")
    for p in paths:
        for sub in ("images", "labels"):
            if not (p / f"{sub}.vrt").is_file():
                raise SatSynthError(f"{sub}.vrt not found: not a folder written by 'satsynth "
                                    f"synthesize'", p)
    pool = np.concatenate([np.asarray(x, np.float32) for x in scores])
    owner = np.concatenate([np.full(len(x), i) for i, x in enumerate(splits)])
    local = np.concatenate([np.arange(len(x)) for x in splits])
    chosen = select_pairs(pool, keep, min_score)
    if not len(chosen):
        raise SatSynthError(f"no pair has a mIoU of at least {min_score} (best "
                            f"{np.nanmax(pool[:, 0]):.3f})", paths[0])
    size = first.meta.chip_size
    transforms = _compact_grid(splits[0].transforms[0], len(chosen), size)
    meta = first.meta
    filt = {"from": [str(p.resolve()) for p in paths], "keep": keep, "min_score": min_score,
            "pool_pairs": int(len(pool)), "kept_pairs": int(len(chosen)),
            "threshold_miou": round(float(np.nan_to_num(pool[chosen[-1], 0], nan=-1)), 5),
            "pool_scores": summarize_scores(pool), "kept_scores": summarize_scores(pool[chosen]),
            **(note or {})}
    meta.extra = {**meta.extra, "filter": filt}
    meta.sources = [{**(meta.sources[0] if meta.sources else {}), "image": "images.vrt",
                     "label": "labels.vrt", "synthetic": True}]
    table = first.classes
    names = [f"syn_{i:05d}.tif" for i in range(len(chosen))]
    with ChipStoreWriter(out, meta, {"train": len(chosen)}) as w:
        for sub in ("images", "labels"):
            (w.tmp / sub).mkdir()
        for new, (j, t) in enumerate(progress.track(list(zip(chosen, transforms, strict=True)),
                                                    "filter-pairs", unit="pair")):
            arr, i = splits[owner[j]], int(local[j])
            w.add("train", np.asarray(arr.images[i]), np.asarray(arr.labels[i]), t, source=0)
            for sub in ("images", "labels"):
                src_file = paths[owner[j]] / sub / f"syn_{i:05d}.tif"
                if not src_file.is_file():
                    raise SatSynthError("synthetic chip GeoTIFF not found", src_file)
                dst_file = w.tmp / sub / names[new]
                shutil.copyfile(src_file, dst_file)
                with rasterio.open(dst_file, "r+") as dst:
                    dst.transform = Affine(*t)
                    dst.update_tags(SATSYNTH_INDEX=str(new), SATSYNTH_RANK=str(new + 1),
                                    TIFFTAG_IMAGEDESCRIPTION=f"SatSynth synthetic "
                                    f"{sub[:-1]} {new} (filtered by pair consistency)",
                                    SATSYNTH_PAIR_MIOU=f"{pool[j, 0]:.5f}",
                                    SATSYNTH_PAIR_ACCURACY=f"{pool[j, 1]:.5f}",
                                    SATSYNTH_FILTERED_FROM=f"{paths[owner[j]].name}/{sub}/"
                                                           f"syn_{i:05d}.tif")
        w.set_scores("train", pool[chosen])
        for sub in ("images", "labels"):
            _filtered_vrt(paths[0] / f"{sub}.vrt", w.tmp / f"{sub}.vrt",
                          [f"{sub}/{n}" for n in names], transforms, size)
        if len(paths) == 1 and (paths[0] / SCORED_GRID).is_file():  # the pool's ends
            shutil.copyfile(paths[0] / SCORED_GRID, w.tmp / SCORED_GRID)
        if (paths[0] / "labels.qml").is_file():
            shutil.copyfile(paths[0] / "labels.qml", w.tmp / "labels.qml")
        report = read_json(paths[0] / "report.json") if (paths[0] / "report.json").is_file() \
            else {}
        labels = np.concatenate([np.asarray(splits[owner[j]].labels[local[j]])[None]
                                 for j in chosen])
        counts = np.bincount(labels.ravel(), minlength=256)[:table.num_classes]
        real = np.asarray([c.get("real_share", 0.0) for c in report.get("classes", [])]
                          or [0.0] * table.num_classes, np.float64)
        tv = tv_distance(real, counts) if real.sum() > 0 else None
        syn_shares = class_shares(counts)
        report.update(count=int(len(chosen)), tv_distance=round(tv, 5) if tv is not None else None,
                      filter=filt)
        report["classes"] = [{"index": i, "id": c.id, "name": c.name,
                              "real_share": round(float(real[i]), 6),
                              "synthetic_share": round(float(syn_shares[i]), 6)}
                             for i, c in enumerate(table.classes)]
        report.pop("placement", None)
        if "pair_consistency" in report:
            report["pair_consistency"] = {**report["pair_consistency"],
                                          "summary": filt["kept_scores"]}
        write_json(w.tmp / "report.json", report)
        plot_class_shares(class_shares(real), syn_shares, table, w.tmp / "class_shares.png", tv)
        top = [int(j) for j in chosen[:16]]
        grid_images = np.stack([np.asarray(splits[owner[j]].images[local[j]]) for j in top])
        sample_grid(first.normalizer.to_model(grid_images), labels[:len(top)], table,
                    w.tmp / "samples.png")
    log.info("kept %d of %d pairs (pair mIoU >= %.3f)", len(chosen), len(pool),
             filt["threshold_miou"])
    out = Path(out)
    return {"synthetic": str(out), "images_vrt": str(out / "images.vrt"),
            "labels_vrt": str(out / "labels.vrt"), "labels_qml": str(out / "labels.qml"),
            "footprints": str(out / "chips.gpkg"), "report": str(out / "report.json"),
            "grid": str(out / "samples.png"), "kept": int(len(chosen)),
            "pool": int(len(pool)), "threshold_miou": filt["threshold_miou"],
            "tv_distance": tv}


def _model_fingerprint(model_dir: Path) -> str:
    import hashlib

    f = model_dir / "model.safetensors"
    st = f.stat()
    with f.open("rb") as fh:
        head = fh.read(1 << 20)
    return hashlib.sha1(head + f"{st.st_size}".encode()).hexdigest()[:16]


def filtered_pool(pool: list[str], out: Path, seed: int, baseline_model: Path | None,
                  keep: float, device: str = "auto") -> list[str]:
    """The experiment's filtered pool for one seed: the ``keep`` fraction of the pool's pairs
    that the real-only segmenter of that seed finds most consistent, written once per seed as
    ``out/synthetic/filtered-keep<F>-seed<S>`` (rewritten when that segmenter changed)."""
    folder = out / "synthetic" / f"filtered-keep{keep:g}-seed{seed}"
    cached = None
    if (folder / "dataset.json").is_file():
        cached = ChipStore(folder).meta.extra.get("filter", {})
    fp = _model_fingerprint(baseline_model) if baseline_model is not None else None
    pool_ids = [str(Path(p).resolve()) for p in pool]
    if cached is None or cached.get("from") != pool_ids or (
            fp is not None and cached.get("scored_by") != fp):
        if baseline_model is None:
            raise SatSynthError(f"the filtered variants need the real-only segmenter of seed "
                                f"{seed} to score the pool, and this experiment folder no "
                                f"longer holds it (R=0 models are kept only while an "
                                f"experiment runs): run the filtered variants with a new --out, "
                                f"or from the start with --keep-models", out)
        model, cfg, dev = _load_scorer(baseline_model, ChipStore(pool[0]), device)
        scores = [pair_scores(model, ChipStore(p).split("train"), cfg.normalization,
                              cfg.num_classes, 32, dev) for p in pool]
        filter_pairs(pool, folder, keep=keep, scores=scores,
                     note={"scored_by": fp, "segmenter": str(baseline_model)})
    return [str(folder)]


# --------------------------------------------------------------------------------------------
# FID / KID (only with a local feature-extractor weights file)


def _real_store(real: str | Path | None, cfg: Any, segmenter: str | Path) -> ChipStore:
    path = real or cfg.training.get("dataset")
    if not path:
        raise SatSynthError("FID/KID need the real chips: give --real DATASET", segmenter)
    return ChipStore(path)


def _uint8_rgb(images: np.ndarray, normalizer: Normalizer) -> Any:
    import torch

    from satsynth.generator.report import to_display

    rgb = to_display(normalizer.to_model(np.asarray(images)))  # (N,H,W,3) in [0,1]
    return torch.from_numpy((rgb * 255 + 0.5).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def fid_kid(synthetic: ChipStore, real: ChipStore, weights: str | Path | None = None,
            feature: Any = None, device: Any = "cpu", batch_size: int = 64,
            seed: int = 0) -> dict[str, Any]:
    """FID and KID (torchmetrics) between the synthetic chips and up to ``FID_MAX_REAL`` real
    training chips, both shown as 8-bit RGB (first three bands, the real dataset's
    normalization). The features come from torch-fidelity's InceptionV3 with the local
    ``weights`` file, or from ``feature`` (an ``nn.Module`` taking uint8 (N,3,H,W) images)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if (weights is None) == (feature is None):
        raise SatSynthError("FID/KID need either a local weights file or a feature extractor")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise SatSynthError("Inception weights file not found", weights)
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise SatSynthError("--fid-weights needs torch-fidelity: pip install "
                                "'satsynth[fid]' (or torch-fidelity)") from None
        label = f"InceptionV3 pool features (torch-fidelity), weights {weights}"
    else:
        label = f"custom feature extractor {type(feature).__name__}"
    syn = synthetic.split("train")
    tr = real.split("train")
    rng = np.random.default_rng(seed)
    real_idx = np.sort(rng.choice(len(tr), size=min(len(tr), FID_MAX_REAL), replace=False))
    n = min(len(syn), len(real_idx))
    if n < 2:
        raise SatSynthError("FID/KID need at least 2 synthetic and 2 real chips", synthetic.path)
    kw: dict[str, Any] = ({"feature": 2048, "feature_extractor_weights_path": str(weights)}
                          if weights is not None else {"feature": feature})
    try:
        fid = FrechetInceptionDistance(**kw).to(device)
    except Exception as exc:  # noqa: BLE001 - torch-fidelity/torch raise many kinds on a bad file
        raise SatSynthError(f"cannot build the feature extractor ({exc})", weights) from None
    # KID takes no weights path: it shares FID's extractor, so nothing is ever downloaded
    kid = KernelInceptionDistance(feature=fid.inception, subset_size=min(100, n)).to(device)
    norm = real.normalizer
    with progress.task("fid-kid", total=len(real_idx) + len(syn), unit="chip") as bar:
        for arr, idx, is_real in ((tr, real_idx, True), (syn, np.arange(len(syn)), False)):
            for s in range(0, len(idx), batch_size):
                x = _uint8_rgb(arr.images[idx[s:s + batch_size]], norm).to(device)
                fid.update(x, real=is_real)
                kid.update(x, real=is_real)
                bar.update(len(x))
    kid_mean, kid_std = kid.compute()
    return {"fid": round(float(fid.compute()), 4), "kid_mean": round(float(kid_mean), 6),
            "kid_std": round(float(kid_std), 6), "feature_extractor": label,
            "real_chips": int(len(real_idx)), "synthetic_chips": int(len(syn)),
            "note": "chips are resized to the extractor's input size; compare only with figures "
                    "from the same extractor, chip size and dataset"}


__all__ = ["SCORED_GRID", "fid_kid", "filter_pairs", "filtered_pool", "pair_scores", "plot_scored_pairs",
           "score_pairs", "select_pairs", "summarize_scores"]
