"""``satsynth prepare``: labeled rasters in, a chip store (training chips with georeference) out.

Two passes over the inputs, both tile by tile so that large rasters are never loaded whole:

1. *scan*: read the labels (and the image's validity), count the label values over the whole
   raster (to check them against the class table, or to infer one) and measure the labeled
   fraction of every candidate chip;
2. *write*: split the kept chips into train/val by spatial blocks, then read each tile again and
   write its chips with :class:`~satsynth.data.store.ChipStoreWriter`, sampling training pixels
   for the per-band normalization (2nd-98th percentiles) on the way.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.contract import PrepareFields, range_problems
from satsynth.data.chipping import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    assign_split,
    cap_chips,
    overlapping_train,
)
from satsynth.data.classes import IGNORE_INDEX, ClassInfo, ClassTable
from satsynth.data.labels import (
    UNKNOWN_HINT,
    CodeMap,
    RasterLabelReader,
    code_histogram,
    code_to_hex,
    describe_unknown,
    ignore_codes,
)
from satsynth.data.normalize import Normalizer
from satsynth.data.sources import PairSpec, find_folder_pairs, refuse_repeats
from satsynth.data.store import ChipStoreWriter, StoreMeta
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.raster import (
    Grid,
    crs_name,
    crs_to_string,
    footprint_boxes,
    grid_of,
    open_raster,
    plan_tiles,
    read_window,
    valid_mask,
)

log = logging.getLogger("satsynth")

PathLike = str | Path
#: Pixels sampled from the training chips to fit the normalization.
NORM_SAMPLES = 200_000
#: GDAL block cache while preparing, in MB (unless GDAL_CACHEMAX is set).
GDAL_CACHE_MB = 64


@dataclass
class PrepareConfig(PrepareFields):
    """How chips are cut and split (the ``satsynth prepare`` options, :class:`PrepareFields`),
    checked against the ranges declared there."""

    tile_span: int = 2048  # largest window side read at once (memory bound)

    def __post_init__(self) -> None:
        self.stride = self.chip_size if self.stride is None else int(self.stride)
        if isinstance(self.val_sources, str):
            self.val_sources = tuple(s.strip() for s in self.val_sources.split(",") if s.strip())
        self.val_sources = tuple(self.val_sources)
        if isinstance(self.test_sources, str):
            self.test_sources = tuple(s.strip() for s in self.test_sources.split(",")
                                      if s.strip())
        self.test_sources = tuple(self.test_sources)
        problems = range_problems(self)
        if problems:
            raise SatSynthError(problems[0])
        if self.stride > self.chip_size:
            raise SatSynthError(f"stride must be between 1 and the chip size ({self.chip_size}), "
                                f"got {self.stride}")
        held = (0.0 if self.val_sources else self.val_fraction) + \
            (0.0 if self.test_sources else self.test_fraction)
        if held >= 1.0:
            raise SatSynthError(f"--val-fraction and --test-fraction add up to {held:g}: nothing "
                                "would be left for training")


@dataclass
class _Source:
    index: int
    spec: PairSpec
    src: Any  # rasterio dataset of the image
    grid: Grid
    reader: Any = None
    val_source: bool = False
    test_source: bool = False
    hist: Counter = field(default_factory=Counter)
    tiles: list = field(default_factory=list)
    # kept candidate chips: (row, col, labeled fraction)
    chips: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.reader.kind


def _as_list(x: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if x is None:
        return []
    if isinstance(x, (str, Path)):
        return [Path(x)]
    return [Path(p) for p in x]


def _pair_specs(images: list[Path], labels: list[Path], vectors: list[Path],
                folder: Path | None, layer: str | None) -> list[PairSpec]:
    given = [n for n, v in (("--labels", labels), ("--vector", vectors), ("--folder", folder)) if v]
    if len(given) != 1:
        raise SatSynthError("give the labels one way: --image with --labels, --image with "
                            "--vector, or --folder" + (f" (got {' and '.join(given)})" if given
                                                       else ""))
    if folder:
        if images:
            raise SatSynthError("--folder finds its images itself; do not combine it with --image")
        return find_folder_pairs(folder)
    if not images:
        raise SatSynthError("no --image given")
    if labels:
        if len(labels) != len(images):
            raise SatSynthError(f"{len(images)} --image but {len(labels)} --labels: give one label "
                                "raster per image, in the same order")
        return [PairSpec(i, lab, "raster") for i, lab in zip(images, labels, strict=True)]
    if len(vectors) not in (1, len(images)):
        raise SatSynthError(f"{len(images)} --image but {len(vectors)} --vector: give one vector "
                            "file for all images, or one per image")
    vecs = vectors * len(images) if len(vectors) == 1 else vectors
    return [PairSpec(i, v, "vector", layer) for i, v in zip(images, vecs, strict=True)]


def _load_table(classes: PathLike | ClassTable | dict | None) -> ClassTable | None:
    if classes is None or isinstance(classes, ClassTable):
        return classes
    if isinstance(classes, (dict, list)):
        return ClassTable.from_dict(classes)
    return ClassTable.load(classes)


def _open_images(specs: list[PairSpec], cfg: PrepareConfig, lenient: bool) -> list[_Source]:
    sources: list[_Source] = []
    try:
        for spec in specs:
            src = open_raster(spec.image, "image")
            dts = set(src.dtypes)
            if len(dts) > 1:
                src.close()
                raise SatSynthError(f"bands have different data types {sorted(dts)}", spec.image)
            dt = np.dtype(src.dtypes[0])
            if np.issubdtype(dt, np.complexfloating):
                src.close()
                raise SatSynthError(f"complex data ({dt}) is not supported", spec.image)
            if src.width < cfg.chip_size or src.height < cfg.chip_size:
                msg = (f"{src.width}x{src.height} px is smaller than one {cfg.chip_size} px chip; "
                       "use a smaller --chip-size")
                src.close()
                if lenient:
                    log.warning("%s: %s; skipped", spec.image, msg)
                    continue
                raise SatSynthError(msg, spec.image)
            sources.append(_Source(len(sources), spec, src, grid_of(src)))
        if not sources:
            raise SatSynthError(f"no image is at least one {cfg.chip_size} px chip in size; use a "
                                "smaller --chip-size")
        first = sources[0]
        for s in sources[1:]:
            a, b = first.src, s.src
            if a.count != b.count:
                raise SatSynthError(
                    f"{b.count} bands but {first.spec.image.name} has {a.count}: all images of "
                    "one dataset need the same bands", s.spec.image)
            if a.dtypes[0] != b.dtypes[0]:
                raise SatSynthError(
                    f"data type {b.dtypes[0]} but {first.spec.image.name} is {a.dtypes[0]}: all "
                    "images of one dataset need the same data type (convert with gdal_translate "
                    "-ot)", s.spec.image)
            if first.grid.georeferenced != s.grid.georeferenced:
                which = (s, first) if first.grid.georeferenced else (first, s)
                raise SatSynthError(
                    f"{which[0].spec.image} is not georeferenced but {which[1].spec.image} is: "
                    "one dataset cannot mix georeferenced and pixel-space images")
            if s.grid.georeferenced and s.grid.crs != first.grid.crs:
                raise SatSynthError(
                    f"in {crs_name(s.grid.crs)} but {first.spec.image.name} is in "
                    f"{crs_name(first.grid.crs)}: all images of one dataset must share one CRS "
                    "(reproject them with gdalwarp -t_srs first)", s.spec.image)
    except BaseException:
        for s in sources:
            s.src.close()
        raise
    return sources


def _read_tile(s: _Source, tile: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    w = tile.window
    data = read_window(s.src, s.spec.image, window=w)
    valid = valid_mask(s.src, s.spec.image, data, range(1, s.src.count + 1), w)
    codes = s.reader.read_codes(w)
    return data, codes, valid


def _chip_sums(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``mask`` in every size x size chip at (rows x cols) (tile-relative offsets)."""
    dt = np.int32 if mask.size < 2**31 else np.int64
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=dt)
    np.cumsum(np.cumsum(mask, axis=0, dtype=dt), axis=1, out=ii[1:, 1:])
    r, c = rows[:, None], cols[None, :]
    return ii[r + size, c + size] - ii[r, c + size] - ii[r + size, c] + ii[r, c]


def _scan(sources: list[_Source], table: ClassTable | None, cfg: PrepareConfig) -> None:
    """Pass 1: label histograms and the labeled fraction of every candidate chip."""
    s_ = cfg.chip_size
    for s in sources:
        s.tiles = plan_tiles(s.grid.height, s.grid.width, s_, cfg.stride, cfg.tile_span)
    total = sum(s.grid.width * s.grid.height for s in sources) / 1e6
    with progress.task("prepare: reading labels", total=total, unit="Mpx") as t:
        for s in sources:
            ign = np.asarray(sorted(ignore_codes(s.kind, table)), dtype=np.int64)
            for tile in s.tiles:
                _data, codes, valid = _read_tile(s, tile)
                r0, c0 = tile.count_r0 - tile.row_off, tile.count_c0 - tile.col_off
                r1, c1 = tile.count_r1 - tile.row_off, tile.count_c1 - tile.col_off
                region = codes[r0:r1, c0:c1]
                if valid is not None:
                    region = region[valid[r0:r1, c0:c1]]
                s.hist.update(code_histogram(region))
                labeled = ~np.isin(codes, ign)
                if valid is not None:
                    labeled &= valid
                sums = _chip_sums(labeled, tile.row_offsets - tile.row_off,
                                  tile.col_offsets - tile.col_off, s_)
                frac = sums / float(s_ * s_)
                ii, jj = np.nonzero((frac >= cfg.min_labeled) & (frac > 0))
                s.chips.extend(zip(tile.row_offsets[ii].tolist(), tile.col_offsets[jj].tolist(),
                                   frac[ii, jj].tolist(), strict=True))
                t.update((tile.count_r1 - tile.count_r0) * (tile.count_c1 - tile.count_c0) / 1e6,
                         message=f"reading labels: {s.spec.labels.name}")


def _infer_table(sources: list[_Source]) -> ClassTable:
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        raise SatSynthError("the masks mix class-id rasters and colour masks; give a class table "
                            "with --classes so both can be read")
    kind = kinds.pop()
    hist: Counter = Counter()
    for s in sources:
        hist.update(s.hist)
    for c in ignore_codes(kind, None):
        hist.pop(c, None)
    if not hist:
        raise SatSynthError("the labels hold no label values at all (only nodata/ignore)")
    if kind == "raster":
        ign = ignore_codes(kind, None)
        problems = []
        for s in sources:
            bad = sorted(((v, n) for v, n in s.hist.items() if not 0 <= v <= 254 and v not in ign),
                         key=lambda vn: (-vn[1], vn[0]))
            if bad:
                problems.append(f"{s.spec.labels}: label values that cannot be class ids (ids are "
                                "0..254, 255 = ignore): "
                                + ", ".join(f"{v} ({n} px)" for v, n in bad[:20]))
        if problems:
            raise SatSynthError(
                "; ".join(problems[:5]) + "; declare them as nodata on the label raster or list "
                "them under 'ignore_ids' in a class table (--classes)")
        table = ClassTable.from_values(hist.keys())
    else:
        codes = sorted(hist, key=lambda c: -hist[c])
        table = ClassTable([ClassInfo(i, f"class {code_to_hex(c)}",
                                      ((c >> 16) & 255, (c >> 8) & 255, c & 255))
                            for i, c in enumerate(codes)])
    log.info("class table inferred from the labels: %s (save one with names as JSON and pass "
             "--classes to name them)", ", ".join(f"{c.id} {c.name}" for c in table.classes))
    return table


def _validate_values(sources: list[_Source], table: ClassTable) -> dict[str, CodeMap]:
    maps = {k: CodeMap(k, table) for k in {s.kind for s in sources}}
    problems = []
    for s in sources:
        bad = maps[s.kind].unknown(s.hist)
        if bad:
            problems.append((s.spec.labels, describe_unknown(s.kind, bad)))
    if problems:
        if len(problems) == 1:
            raise SatSynthError(problems[0][1] + UNKNOWN_HINT, problems[0][0])
        lines = "; ".join(f"{p}: {m}" for p, m in problems[:5])
        more = f"; and {len(problems) - 5} more files" if len(problems) > 5 else ""
        raise SatSynthError(f"{len(problems)} label files have values not in the class table: "
                            f"{lines}{more}{UNKNOWN_HINT}")
    return maps


def _make_readers(sources: list[_Source], table: ClassTable | None, class_field: str | None,
                  cfg: PrepareConfig) -> ClassTable | None:
    """Open the label reader of every source; for vector labels also settle the class table."""
    vec = [s for s in sources if s.spec.kind == "vector"]
    if vec:
        from satsynth.data.vector import (
            SINGLE_CLASS_FIELD,
            VectorLabelReader,
            field_values,
            load_vector,
            resolve_classes,
        )

        field_name = class_field or SINGLE_CLASS_FIELD
        frames: dict[Path, Any] = {}
        values: Counter = Counter()
        for s in vec:
            if s.spec.labels not in frames:
                frames[s.spec.labels] = load_vector(s.spec.labels, s.spec.layer, class_field)
                values.update(field_values(frames[s.spec.labels], field_name))
        where = str(vec[0].spec.labels) if len(frames) == 1 else "vector labels"
        table, lut, bg = resolve_classes(values, table, cfg.background, where)
        for s in vec:
            s.reader = VectorLabelReader(frames[s.spec.labels], field_name, lut, s.spec.labels,
                                         s.spec.image, s.grid, cfg.line_buffer, cfg.all_touched,
                                         bg)
    for s in sources:
        if s.reader is None:
            s.reader = RasterLabelReader(s.spec.labels, s.spec.image, s.grid, s.spec.kind,
                                         cfg.labels_on_image_grid)
    return table


def _split(sources: list[_Source], cfg: PrepareConfig) -> tuple[np.ndarray, ...]:
    """Arrays (source, row, col, split) of the chips to write, in tile order."""
    src = np.asarray([s.index for s in sources for _ in s.chips], dtype=np.int64)
    rows = np.asarray([r for s in sources for r, _, _ in s.chips], dtype=np.int64)
    cols = np.asarray([c for s in sources for _, c, _ in s.chips], dtype=np.int64)
    n = len(src)
    if n == 0:
        raise SatSynthError(
            f"no chip has at least {cfg.min_labeled:.0%} labeled pixels (--min-labeled "
            f"{cfg.min_labeled}): check that the labels cover the images, or lower --min-labeled")
    val_mask = None
    if cfg.val_sources:
        val_mask = np.asarray([s.val_source for s in sources], dtype=bool)
        log.info("validation = the sources matching --val-sources (%d of %d); no blocks of the "
                 "other sources are held out", int(val_mask.sum()), len(sources))
    elif any(s.spec.split for s in sources):
        val_mask = np.asarray([s.val_source for s in sources], dtype=bool)
        log.info("validation = the dataset's official validation split (%d of %d sources)",
                 int(val_mask.sum()), len(sources))
    test_mask = None
    if cfg.test_sources:
        test_mask = np.asarray([s.test_source for s in sources], dtype=bool)
        log.info("test = the sources matching --test-sources (%d of %d)", int(test_mask.sum()),
                 len(sources))
    elif any(s.spec.split for s in sources):
        test_mask = np.asarray([s.test_source for s in sources], dtype=bool)
        log.info("test = the dataset's official test split (%d of %d sources)",
                 int(test_mask.sum()), len(sources))
    block = cfg.block_size * cfg.chip_size
    split = assign_split(src, rows, cols, cfg.val_fraction, block, val_mask, cfg.seed,
                         cfg.test_fraction, test_mask)
    wanted = [(s, f) for s, f, m in ((VAL, cfg.val_fraction, val_mask),
                                     (TEST, cfg.test_fraction, test_mask)) if m is None and f > 0]
    if any(not (split == s).any() for s, _ in wanted) and n >= 2:
        log.warning("too few %d-chip blocks for a spatial split; holding out single chips instead "
                    "(lower --block-size to silence this)", cfg.block_size)
        split = assign_split(src, rows, cols, cfg.val_fraction, cfg.stride, val_mask, cfg.seed,
                             cfg.test_fraction, test_mask)
    # no training chip may overlap a validation or test chip, nor a validation chip a test chip
    # (overlapping strides, edge chips, or overlapping georeferenced sources)
    tf = np.asarray([tuple(_chip_transform(sources[i].grid, r, c))[:6]
                     for i, r, c in zip(src, rows, cols, strict=True)], dtype=np.float64)
    geo = sources[0].grid.georeferenced
    groups = np.zeros(n, dtype=np.int64) if geo else src
    boxes = footprint_boxes(tf, cfg.chip_size)
    drop = overlapping_train(boxes, groups, split)
    if drop.any():
        log.info("%d training chips overlapping validation or test chips dropped",
                 int(drop.sum()))
    drop_val = overlapping_train(boxes, groups, split, kept=VAL, held=(TEST,))
    if drop_val.any():
        log.info("%d validation chips overlapping test chips dropped", int(drop_val.sum()))
    keep = ~(drop | drop_val)
    src, rows, cols, split = src[keep], rows[keep], cols[keep], split[keep]
    if cfg.max_chips is not None and len(src) > cfg.max_chips:
        keep = cap_chips(split, cfg.max_chips, cfg.seed)
        log.info("--max-chips %d: keeping %d of %d chips", cfg.max_chips, int(keep.sum()), len(src))
        src, rows, cols, split = src[keep], rows[keep], cols[keep], split[keep]
    if not (split == TRAIN).any():
        raise SatSynthError("no chip is left for training (every source went to validation?): "
                            "check --val-sources and --val-fraction")
    if not (split == VAL).any() and (cfg.val_fraction > 0 or cfg.val_sources):
        log.warning("no validation chips: the labeled area is too small for a held-out block")
    if not (split == TEST).any() and (cfg.test_fraction > 0 or cfg.test_sources):
        log.warning("no test chips: the labeled area is too small for a held-out block")
    return src, rows, cols, split


def _chip_transform(grid: Grid, row: int, col: int) -> Any:
    from affine import Affine

    return grid.transform @ Affine.translation(int(col), int(row))


def _write(out: Path, sources: list[_Source], table: ClassTable, maps: dict[str, CodeMap],
           chosen: tuple[np.ndarray, ...], cfg: PrepareConfig, extra: dict[str, Any]) -> Path:
    """Pass 2: write the chosen chips and fit the normalization on the training chips."""
    src_idx, rows, cols, split = chosen
    first = sources[0]
    dtype = first.src.dtypes[0]
    bands = first.src.count
    n_train, n_val = int((split == TRAIN).sum()), int((split == VAL).sum())
    capacity = {"train": n_train, "val": n_val}
    if (split == TEST).any() or cfg.test_fraction > 0 or cfg.test_sources:
        capacity["test"] = int((split == TEST).sum())
    g = first.grid
    pixel_size = (abs(g.transform.a), abs(g.transform.e)) if g.georeferenced else None
    if g.georeferenced:
        sizes = {(round(abs(s.grid.transform.a), 9), round(abs(s.grid.transform.e), 9))
                 for s in sources}
        if len(sizes) > 1:
            log.warning("the images have different pixel sizes %s; chips keep their own "
                        "transforms, the dataset reports the first", sorted(sizes))
    meta = StoreMeta(
        classes=table, bands=bands, dtype=dtype, chip_size=cfg.chip_size,
        normalizer=Normalizer([0.0] * bands, [1.0] * bands, dtype),
        crs=crs_to_string(g.crs), pixel_size=pixel_size,
        sources=[_source_meta(s, split[src_idx == s.index]) for s in sources], extra=extra)
    rng = np.random.default_rng(cfg.seed)
    per_chip = max(1, math.ceil(NORM_SAMPLES / max(n_train, 1)))
    samples: list[np.ndarray] = []
    s_ = cfg.chip_size
    lookup = {}
    for k, (i, r, c) in enumerate(zip(src_idx, rows, cols, strict=True)):
        lookup[(int(i), int(r), int(c))] = k
    with ChipStoreWriter(out, meta, capacity) as writer, \
            progress.task("prepare: writing chips", total=len(src_idx), unit="chip") as t:
        for s in sources:
            for tile in s.tiles:
                here = [(lookup[(s.index, int(r), int(c))], int(r), int(c))
                        for r in tile.row_offsets for c in tile.col_offsets
                        if (s.index, int(r), int(c)) in lookup]
                if not here:
                    continue
                data, codes, valid = _read_tile(s, tile)
                labels = maps[s.kind](codes)
                if valid is not None:
                    labels[~valid] = IGNORE_INDEX
                for k, r, c in here:
                    y, x = r - tile.row_off, c - tile.col_off
                    img = data[:, y:y + s_, x:x + s_]
                    lab = labels[y:y + s_, x:x + s_]
                    name = SPLIT_NAMES[split[k]]
                    writer.add(name, img, lab, tuple(_chip_transform(s.grid, r, c))[:6],
                               source=s.index, col=c, row=r)
                    if split[k] == TRAIN:
                        if valid is None:
                            flat = rng.choice(s_ * s_, size=min(per_chip, s_ * s_), replace=False)
                            ys, xs = np.divmod(flat, s_)
                        else:
                            ys, xs = np.nonzero(valid[y:y + s_, x:x + s_])
                            pick = rng.choice(len(ys), size=min(per_chip, len(ys)), replace=False)
                            ys, xs = ys[pick], xs[pick]
                        if len(ys):
                            samples.append(img[:, ys, xs].astype(np.float64))
                    t.update(1, message=f"writing chips: {s.spec.image.name}")
        if not samples:
            raise SatSynthError("the training chips hold no valid image pixels (all nodata)")
        meta.normalizer = Normalizer.fit(np.concatenate(samples, axis=1), dtype)
    return out


def _source_meta(s: _Source, splits: np.ndarray) -> dict[str, Any]:
    return {
        "image": str(s.spec.image.resolve()),
        "labels": str(s.spec.labels.resolve()),
        "label_kind": s.kind,
        "layer": s.spec.layer,
        "width": s.grid.width,
        "height": s.grid.height,
        "crs": crs_to_string(s.grid.crs),
        "transform": list(tuple(s.grid.transform)[:6]),
        "val_source": s.val_source,
        "test_source": s.test_source,
        "chips": {name: int((splits == k).sum()) for k, name in enumerate(SPLIT_NAMES)},
    }


def prepare_dataset(
    out: PathLike,
    *,
    images: PathLike | Sequence[PathLike] | None = None,
    labels: PathLike | Sequence[PathLike] | None = None,
    vectors: PathLike | Sequence[PathLike] | None = None,
    folder: PathLike | None = None,
    classes: PathLike | ClassTable | dict | None = None,
    layer: str | None = None,
    class_field: str | None = None,
    config: PrepareConfig | None = None,
    layout: str | None = None,
    **options: Any,
) -> Path:
    """Cut labeled rasters into a chip store at ``out`` (``satsynth prepare``).

    Labels come one way: ``labels`` (class-id rasters, one per image), ``vectors`` (one vector file
    per image or one for all, with ``class_field``) or ``folder`` (images/ + masks/ folders of
    colour masks, matched by name), or ``folder`` holding a published dataset as downloaded, with
    ``layout`` naming it (see :mod:`satsynth.data.layouts`: its class table and official split are
    used).

    Args:
        out (`str` or `Path`):
            The dataset folder (new, empty, or an earlier dataset, which is replaced atomically).
        images (path or sequence of paths, *optional*):
            The image rasters (``--image``).
        labels (path or sequence of paths, *optional*):
            One class-id raster per image (``--labels``).
        vectors (path or sequence of paths, *optional*):
            Vector labels: one file per image or one for all (``--vector``).
        folder (`str` or `Path`, *optional*):
            A folder of images/ and masks/ (``--folder``), or a published dataset with ``layout``.
        classes (path, `ClassTable` or `dict`, *optional*):
            The class table; inferred from the labels when absent (``folder/classes.json`` for a
            folder).
        layer (`str`, *optional*):
            The vector layer (``--layer``).
        class_field (`str`, *optional*):
            The vector field holding class names or ids (``--class-field``).
        config (`PrepareConfig`, *optional*):
            The chipping options; defaults to :class:`PrepareConfig`'s.
        layout (`str`, *optional*):
            ``loveda``, ``openearthmap`` or ``isaid`` (``--layout``).
        **options:
            :class:`PrepareConfig` fields (chip_size, stride, val_fraction, ...) overriding
            ``config``'s.

    Returns:
        `Path`: the dataset folder.

    Raises:
        `SatSynthError`: bad input (one line naming the file and the problem); nothing is written
        then.
    """
    import rasterio

    # GDAL's block cache would otherwise grow with the rasters read (5% of RAM by default);
    # every tile is read once per pass, so a small cache costs nothing
    env: dict[str, Any] = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB}
    pairs = None
    if layout is not None:
        from satsynth.data.layouts import find_layout_pairs, needs_pixel_space

        if images or labels or vectors or classes is not None or folder is None:
            raise SatSynthError("--layout reads a downloaded dataset from --folder, with its own "
                                "class table: give only --folder (no --image, --labels, --vector "
                                "or --classes)")
        pairs, lay = find_layout_pairs(layout, folder)
        classes = lay.table()
        if needs_pixel_space(lay, pairs):
            env["GDAL_GEOREF_SOURCES"] = "NONE"  # GDAL then reads no georeference at all
    with rasterio.Env(**env):
        return _prepare(out, images, labels, vectors, folder, classes, layer, class_field, config,
                        options, pairs)


def _prepare(out: PathLike, images: Any, labels: Any, vectors: Any, folder: PathLike | None,
             classes: Any, layer: str | None, class_field: str | None,
             config: PrepareConfig | None, options: dict[str, Any],
             pairs: list[PairSpec] | None = None) -> Path:
    cfg = config or PrepareConfig(**options)
    if config is not None and options:
        cfg = PrepareConfig(**{**asdict(config), **options})
    out = check_output(out, "dataset", inputs=[
        *_as_list(images), *_as_list(labels), *_as_list(vectors), folder,
        classes if isinstance(classes, (str, Path)) else None])
    folder_p = Path(folder) if folder is not None else None
    if classes is None and folder_p is not None and (folder_p / "classes.json").is_file():
        classes = folder_p / "classes.json"
        log.info("class table: %s", classes)
    table = _load_table(classes)
    specs = pairs if pairs is not None else \
        _pair_specs(_as_list(images), _as_list(labels), _as_list(vectors), folder_p, layer)
    refuse_repeats([sp.image for sp in specs], "--image" if folder_p is None else
                   f"--folder (its images; {folder_p})")
    sources = _open_images(specs, cfg, lenient=folder_p is not None)
    try:
        for s in sources:
            s.val_source = any(p in str(s.spec.image) or p in str(s.spec.labels)
                               for p in cfg.val_sources) if cfg.val_sources or not s.spec.split \
                else s.spec.split == "val"
        for s in sources:
            s.test_source = any(p in str(s.spec.image) or p in str(s.spec.labels)
                                for p in cfg.test_sources) if cfg.test_sources or not s.spec.split \
                else s.spec.split == "test"
        if cfg.test_sources:
            n_test = sum(s.test_source for s in sources)
            if n_test == 0:
                raise SatSynthError(f"--test-sources {','.join(cfg.test_sources)} matches none "
                                    f"of the {len(sources)} sources")
            both = [s.spec.image.name for s in sources if s.test_source and s.val_source]
            if both:
                raise SatSynthError(f"{', '.join(both[:5])} match both --val-sources and "
                                    "--test-sources: a source is either validation or test")
            if n_test + sum(s.val_source for s in sources) == len(sources):
                raise SatSynthError("--val-sources and --test-sources match every source: "
                                    "nothing would be left for training")
        if cfg.val_sources:
            n_val = sum(s.val_source for s in sources)
            if n_val == 0:
                raise SatSynthError(f"--val-sources {','.join(cfg.val_sources)} matches none of "
                                    f"the {len(sources)} sources")
            if n_val == len(sources):
                raise SatSynthError(f"--val-sources {','.join(cfg.val_sources)} matches every "
                                    "source: nothing would be left for training")
        table = _make_readers(sources, table, class_field, cfg)
        _scan(sources, table, cfg)
        if table is None:
            table = _infer_table(sources)
        maps = _validate_values(sources, table)
        _report_ignored(sources)
        chosen = _split(sources, cfg)
        extra = {
            "prepare": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in asdict(cfg).items() if k != "tile_span"},
            "crs_wkt": sources[0].grid.crs.to_wkt() if sources[0].grid.georeferenced else None,
            "class_field": class_field,
        }
        _write(out, sources, table, maps, chosen, cfg, extra)
    finally:
        for s in sources:
            if s.reader is not None:
                s.reader.close()
            s.src.close()
    split = chosen[3]
    log.info("dataset %s: %d training, %d validation and %d test chips of %d px, %d classes",
             out, int((split == TRAIN).sum()), int((split == VAL).sum()),
             int((split == TEST).sum()), cfg.chip_size, table.num_classes)
    return out


def _report_ignored(sources: list[_Source]) -> None:

    for s in sources:
        if s.kind != "raster":
            continue
        total = sum(s.hist.values())
        n = s.hist.get(IGNORE_INDEX, 0)
        if total and n:
            log.info("%s: %.1f%% of pixels have value 255, which means ignore (not trained on); "
                     "if 255 marks a class, recode it first, e.g. gdal_calc.py --calc='(A==255)*1'",
                     s.spec.labels.name, 100.0 * n / total)
