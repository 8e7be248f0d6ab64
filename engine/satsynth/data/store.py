"""The chip store: training chips in memory-mappable arrays plus a footprint index.

Layout of a dataset folder::

    dataset.json            metadata (classes, bands, dtype, chip size, normalization, CRS, sources)
    <split>.images.npy      (N, C, S, S) image chips in the source dtype
    <split>.labels.npy      (N, S, S) uint8 class indices, 255 = ignore
    <split>.transforms.npy  (N, 6) affine (a, b, c, d, e, f) of each chip
    <split>.sources.npy     (N,) int32 index into ``sources``
    <split>.scores.npy      (N, 2) float32 pair-consistency scores (synthetic stores, once
                            scored; see ``SCORE_COLUMNS``), optional
    chips.gpkg              one footprint polygon per chip: split, source, class pixel counts
                            (and, once scored, the scores and the rank of each pair)

Splits are ``train``, ``val`` (model selection) and optionally ``test`` (the final report); a
synthetic store has only ``train``. The ``test`` split is locked: :meth:`ChipStore.split` opens it
only for a caller that says it is the final evaluation, so no training or selection code can read
it by accident.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import FORMAT_VERSION, __version__
from satsynth.data.classes import IGNORE_INDEX, ClassTable, strict_int
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError
from satsynth.io import atomic_dir, check_free_space, read_json, reserve_file, write_json
from satsynth.raster import footprint_boxes

SPLITS = ("train", "val", "test")
#: The split held out for the final evaluation (never read during training or selection).
TEST_SPLIT = "test"
STORE_FORMAT = "satsynth-chips"
#: Columns of ``<split>.scores.npy``: how well a segmenter trained on real chips agrees with each
#: synthetic pair's mask when it segments the pair's image (the pair's mIoU over the classes in
#: the mask or the prediction, and its pixel accuracy). The rank (1 = most consistent) orders by
#: the first column, then the second; NaN (no labeled pixel) ranks last.
SCORE_COLUMNS = ("miou", "pixel_accuracy")


@dataclass
class StoreMeta:
    """Everything about a chip store except the chips themselves."""

    classes: ClassTable
    bands: int
    dtype: str
    chip_size: int
    normalizer: Normalizer
    crs: str | None = None  # WKT of the (common) CRS, None when not georeferenced
    pixel_size: tuple[float, float] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    synthetic: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    class_pixels: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "format_version": FORMAT_VERSION,
            "satsynth_version": __version__,
            "classes": self.classes.to_dict(),
            "bands": self.bands,
            "dtype": self.dtype,
            "chip_size": self.chip_size,
            "normalization": self.normalizer.to_dict(),
            "georeferenced": self.georeferenced,
            "crs": self.crs,
            "pixel_size": list(self.pixel_size) if self.pixel_size else None,
            "sources": self.sources,
            "synthetic": self.synthetic,
            "counts": self.counts,
            "class_pixels": self.class_pixels,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = "dataset.json") -> StoreMeta:
        """Read ``dataset.json``'s form; a damaged or incomplete one is one clear error."""
        if not isinstance(d, dict) or d.get("format") != STORE_FORMAT:
            raise SatSynthError("not a SatSynth chip store (run 'satsynth prepare' first)", where)
        try:
            return cls._from_dict(d, where)
        except SatSynthError as exc:
            if exc.path is not None:
                raise
            raise SatSynthError(str(exc), where) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else "bad values"
            raise SatSynthError(f"damaged or incomplete dataset description ({missing}); "
                                "prepare the dataset again", where) from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any], where: str | Path) -> StoreMeta:
        if strict_int(d.get("format_version", 0), "format_version", 0) > FORMAT_VERSION:
            raise SatSynthError(
                f"written by a newer SatSynth (format {d.get('format_version')}, this is "
                f"{FORMAT_VERSION}); upgrade SatSynth", where)
        return cls(
            classes=ClassTable.from_dict(d["classes"], where=str(where)),
            bands=strict_int(d["bands"], "bands", 1),
            dtype=str(d["dtype"]),
            chip_size=strict_int(d["chip_size"], "chip_size", 1),
            normalizer=Normalizer.from_dict(d["normalization"]),
            crs=d.get("crs"),
            pixel_size=tuple(d["pixel_size"]) if d.get("pixel_size") else None,
            sources=list(d.get("sources", [])),
            synthetic=bool(d.get("synthetic", False)),
            counts={k: int(v) for k, v in d.get("counts", {}).items()},
            class_pixels={k: [int(x) for x in v] for k, v in d.get("class_pixels", {}).items()},
            extra=dict(d.get("extra", {})),
        )

    def class_shares(self, split: str = "train") -> np.ndarray:
        """The fraction of labeled pixels of each class in a split.

        Args:
            split (`str`, *optional*, defaults to `"train"`):
                The split.

        Returns:
            `np.ndarray`: ``(num_classes,)`` float, summing to 1 (all 0 for an empty split).
        """
        px = np.asarray(self.class_pixels.get(split, [0] * self.classes.num_classes), dtype=float)
        return px / max(px.sum(), 1.0)


@dataclass
class ChipSplit:
    """The chips of one split, memory-mapped."""

    images: np.ndarray  # (N, C, S, S)
    labels: np.ndarray  # (N, S, S)
    transforms: np.ndarray  # (N, 6)
    sources: np.ndarray  # (N,)
    scores: np.ndarray | None = None  # (N, len(SCORE_COLUMNS)) float32, when scored

    def __len__(self) -> int:
        return int(self.images.shape[0])


class ChipStore:
    """A prepared dataset on disk (see the module docstring for the layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise SatSynthError("dataset folder not found", self.path)
        meta_path = self.path / "dataset.json"
        if not meta_path.is_file():
            raise SatSynthError("no dataset.json: not a SatSynth dataset (run 'satsynth prepare')",
                                self.path)
        self.meta = StoreMeta.from_dict(read_json(meta_path), meta_path)
        self._splits: dict[str, ChipSplit] = {}

    @property
    def classes(self) -> ClassTable:
        return self.meta.classes

    @property
    def normalizer(self) -> Normalizer:
        return self.meta.normalizer

    def has_split(self, split: str) -> bool:
        return (self.path / f"{split}.images.npy").is_file()

    def split(self, split: str, *, final_evaluation: bool = False) -> ChipSplit:
        """Open (memory-map) one split, with a clear error if it is missing or damaged.

        The ``test`` split opens only with ``final_evaluation=True``: the caller reports final
        scores of a model whose training and selection are over (or copies the split unread).

        Args:
            split (`str`):
                ``train``, ``val`` or ``test``.
            final_evaluation (`bool`, *optional*, defaults to `False`):
                Required to open the ``test`` split.

        Returns:
            `ChipSplit`: the split's memory-mapped ``images`` (N, C, S, S), ``labels`` (N, S, S;
            class indices, 255 = ignore), ``transforms`` (N, 6), ``sources`` (N,) and ``scores`` (or
            `None`).

        Raises:
            `SatSynthError`: the test split without ``final_evaluation``, a missing split, or
            damaged or inconsistent arrays.
        """
        if split == TEST_SPLIT and not final_evaluation:
            raise SatSynthError(
                "the 'test' split is held out for the final evaluation and cannot be read for "
                "training or model selection (evaluate with --split test once training is over)",
                self.path)
        if split not in self._splits:
            arrays = {}
            for part in ("images", "labels", "transforms", "sources"):
                f = self.path / f"{split}.{part}.npy"
                if not f.is_file():
                    raise SatSynthError(f"split '{split}' is missing ({f.name} not found)", self.path)
                try:
                    arrays[part] = np.load(f, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise SatSynthError(f"damaged chip array ({exc})", f) from None
            s = ChipSplit(**arrays, scores=self._load_scores(split))
            n = len(s)
            if not (s.labels.shape[0] == s.transforms.shape[0] == s.sources.shape[0] == n):
                raise SatSynthError(f"split '{split}' arrays disagree in length", self.path)
            if s.scores is not None and s.scores.shape != (n, len(SCORE_COLUMNS)):
                raise SatSynthError(f"{split}.scores.npy holds {s.scores.shape[0]} rows for {n} "
                                    f"chips (score the pairs again)", self.path)
            self._splits[split] = s
        return self._splits[split]

    def _load_scores(self, split: str) -> np.ndarray | None:
        f = self.path / f"{split}.scores.npy"
        if not f.is_file():
            return None
        try:
            return np.load(f, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SatSynthError(f"damaged score array ({exc})", f) from None

    def count(self, split: str) -> int:
        """The number of chips in a split, from the labels array's shape alone.

        Allowed for the test split: no chip is read.

        Args:
            split (`str`):
                ``train``, ``val`` or ``test``.

        Returns:
            `int`: the chip count (0 when the split is absent).

        Raises:
            `SatSynthError`: the labels array is damaged.
        """
        f = self.path / f"{split}.labels.npy"
        if not f.is_file():
            return 0
        try:
            return int(np.load(f, mmap_mode="r", allow_pickle=False).shape[0])
        except (ValueError, OSError) as exc:
            raise SatSynthError(f"damaged chip array ({exc})", f) from None

    def __len__(self) -> int:
        return sum(self.count(s) for s in SPLITS)


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """The rank of each pair by its pair-consistency scores.

    Args:
        scores (`np.ndarray`):
            ``(N, len(SCORE_COLUMNS))``: mIoU and pixel accuracy of each pair.

    Returns:
        `np.ndarray`: ``(N,)`` int, 1 = most consistent (highest first column, ties broken by the
        second); rows with NaN scores rank last.
    """
    sc = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-1.0)
    order = np.lexsort(tuple(-sc[:, j] for j in reversed(range(sc.shape[1]))))
    ranks = np.empty(len(sc), np.int64)
    ranks[order] = np.arange(1, len(sc) + 1)
    return ranks


def score_attributes(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The footprint attributes of scored chips: one column per score and the rank."""
    sc = np.asarray(scores, dtype=np.float64)
    cols = {name: np.round(sc[:, j], 5) for j, name in enumerate(SCORE_COLUMNS)}
    cols["rank"] = score_ranks(sc)
    return cols


def write_scored_index(src: str | Path, dst: str | Path, split: str, scores: np.ndarray) -> Path:
    """Copy the footprint GeoPackage with the scores and ranks of one split's chips.

    Args:
        src (`str` or `Path`):
            The store's ``chips.gpkg``.
        dst (`str` or `Path`):
            The new file to write.
        split (`str`):
            The split the scores belong to; chips of other splits get empty values.
        scores (`np.ndarray`):
            ``(number of chips in split, len(SCORE_COLUMNS))``, in chip order.

    Returns:
        `Path`: ``dst``.
    """
    import geopandas as gpd
    import pandas as pd

    gdf = gpd.read_file(src, layer="chips")
    rows = np.nonzero((gdf["split"] == split).to_numpy())[0]
    chip = gdf["chip"].to_numpy()[rows].astype(np.int64)
    if len(rows) != len(scores) or (len(chip) and chip.max() >= len(scores)):
        raise SatSynthError(f"the footprints hold {len(rows)} '{split}' chips, the scores "
                            f"{len(scores)}", src)
    for name, values in score_attributes(scores).items():
        col = pd.Series(pd.NA, index=gdf.index, dtype="Int64" if name == "rank" else "Float64")
        col.iloc[rows] = values[chip]
        gdf[name] = col
    with warnings.catch_warnings():  # pixel-space stores have no CRS on purpose
        warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
        gdf.to_file(dst, layer="chips", driver="GPKG")
    return Path(dst)


def _col_name(name: str, used: set[str]) -> str:
    base = "px_" + (re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "class")
    col, k = base, 2
    while col in used:
        col, k = f"{base}_{k}", k + 1
    used.add(col)
    return col


def _mapped(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A new ``.npy`` file mapped for writing, its space reserved on disk first (a full disk is
    a clear error now, never a SIGBUS mid-write)."""
    arr = np.lib.format.open_memmap(path, "w+", dtype, shape)
    try:
        reserve_file(path, "the chips")
    except BaseException:
        del arr
        raise
    return arr


class ChipStoreWriter:
    """Writes a chip store into a temporary folder, renamed onto ``path`` when closed.

    Use it as a context manager: the store appears complete on success, and nothing is left on an
    error.

    Args:
        path (`str` or `Path`):
            The store's folder (replaced atomically when it exists).
        meta (`StoreMeta`):
            The store's description (classes, bands, dtype, chip size, normalization, CRS, ...).
        capacity (`dict[str, int]`):
            The most chips per split; the arrays are reserved on disk at that size (a full disk is
            one error before the work) and unused room is trimmed.
        write_index (`bool`, *optional*, defaults to `True`):
            Also write the footprints (``chips.gpkg``).
    """

    def __init__(self, path: str | Path, meta: StoreMeta, capacity: dict[str, int],
                 write_index: bool = True) -> None:
        self.path = Path(path)
        self.meta = meta
        self.write_index = write_index
        self._ctx = atomic_dir(self.path)
        self.tmp = self._ctx.__enter__()
        self._n: dict[str, int] = {}
        self._arr: dict[str, dict[str, np.ndarray]] = {}
        try:
            self._map(capacity)
        except BaseException as exc:
            self.abort(type(exc), exc, exc.__traceback__)
            raise
        self._px = {split: np.zeros(meta.classes.num_classes, np.int64) for split in capacity}
        self._rows: list[dict[str, Any]] = []
        self._scores: dict[str, np.ndarray] = {}

    def _map(self, capacity: dict[str, int]) -> None:
        """The arrays of each split, memory-mapped at their capacity (space reserved)."""
        s, c = self.meta.chip_size, self.meta.bands
        chip = s * s * (c * np.dtype(self.meta.dtype).itemsize + 1)
        check_free_space(self.tmp, sum(max(int(n), 0) for n in capacity.values()) * chip,
                         "the chips")
        for split, cap in capacity.items():
            cap = max(int(cap), 0)
            self._n[split] = 0
            self._arr[split] = {
                "images": _mapped(self.tmp / f"{split}.images.npy.cap", np.dtype(self.meta.dtype),
                                  (cap, c, s, s)),
                "labels": _mapped(self.tmp / f"{split}.labels.npy.cap", np.uint8, (cap, s, s)),
                "transforms": np.zeros((cap, 6), np.float64),
                "sources": np.zeros((cap,), np.int32),
            }

    def __enter__(self) -> ChipStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def count(self, split: str) -> int:
        return self._n[split]

    def set_scores(self, split: str, scores: np.ndarray) -> None:
        """Set the pair-consistency scores of every chip of a split.

        They are saved as ``<split>.scores.npy`` and as footprint attributes when the store is
        closed.

        Args:
            split (`str`):
                The split.
            scores (`np.ndarray`):
                ``(chips, len(SCORE_COLUMNS))``: mIoU and pixel accuracy of each chip, in order.
        """
        self._scores[split] = np.asarray(scores, dtype=np.float32).reshape(-1, len(SCORE_COLUMNS))

    def add(self, split: str, image: np.ndarray, label: np.ndarray,
            transform: tuple[float, ...] | Any, source: int = 0, col: int = 0,
            row: int = 0) -> int:
        """Append one chip to a split.

        Args:
            split (`str`):
                The split.
            image (`np.ndarray`):
                ``(C, S, S)`` in the store's dtype.
            label (`np.ndarray`):
                ``(S, S)`` uint8 class indices (255 = ignore).
            transform (`tuple[float, ...]` or `affine.Affine`):
                The chip's affine transform (its first six coefficients are stored).
            source (`int`, *optional*, defaults to 0):
                The index of its source in ``meta.sources``.
            col (`int`, *optional*, defaults to 0):
                Its column offset in the source, in pixels (for the footprints).
            row (`int`, *optional*, defaults to 0):
                Its row offset.

        Returns:
            `int`: the chip's index in the split.

        Raises:
            `SatSynthError`: the split's capacity is exceeded.
        """
        i = self._n[split]
        a = self._arr[split]
        if i >= a["images"].shape[0]:
            raise SatSynthError(f"chip store capacity for '{split}' exceeded")
        a["images"][i] = image
        a["labels"][i] = label
        t = tuple(transform)[:6]
        a["transforms"][i] = t
        a["sources"][i] = source
        if (i + 1) % self.RELEASE_EVERY == 0:
            self._release(split)
        counts = np.bincount(label.ravel(), minlength=256)[: self.meta.classes.num_classes]
        self._px[split] += counts
        self._rows.append({"split": split, "chip": i, "source": int(source), "t": t,
                           "col_off": int(col), "row_off": int(row), "counts": counts.tolist()})
        self._n[split] = i + 1
        return i

    #: Chips between flushes of the memory-mapped arrays (keeps resident memory bounded).
    RELEASE_EVERY = 256

    def _release(self, split: str) -> None:
        """Write dirty pages to disk and drop them from this process's resident memory."""
        import mmap

        for part in ("images", "labels"):
            arr = self._arr[split][part]
            arr.flush()
            mm = getattr(arr, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass

    def abort(self, exc_type: Any = None, exc: BaseException | None = None, tb: Any = None) -> None:
        """Discard everything written so far."""
        self._arr.clear()
        exc = exc or RuntimeError("aborted")
        self._ctx.__exit__(type(exc), exc, tb)

    def close(self) -> Path:
        """Trim the arrays, write the footprints and metadata, and move the store into place.

        Returns:
            `Path`: the store's folder.
        """
        for split, arrays in self._arr.items():
            n = self._n[split]
            for part in ("images", "labels"):
                src = arrays[part]
                final = self.tmp / f"{split}.{part}.npy"
                if n == src.shape[0]:  # full: the array file is already final
                    src.flush()
                    arrays[part] = None  # type: ignore[assignment]
                    del src
                    os.replace(self.tmp / f"{split}.{part}.npy.cap", final)
                    continue
                dst = _mapped(final, src.dtype, (n, *src.shape[1:]))
                for k in range(0, n, 256):
                    e = min(k + 256, n)
                    dst[k:e] = src[k:e]
                dst.flush()
                del dst
                src_file = self.tmp / f"{split}.{part}.npy.cap"
                arrays[part] = None  # type: ignore[assignment]
                del src
                src_file.unlink()
            np.save(self.tmp / f"{split}.transforms.npy", arrays["transforms"][:n])
            np.save(self.tmp / f"{split}.sources.npy", arrays["sources"][:n])
            if split in self._scores:
                if len(self._scores[split]) != n:
                    raise SatSynthError(f"{len(self._scores[split])} scores for {n} '{split}' "
                                        f"chips", self.path)
                np.save(self.tmp / f"{split}.scores.npy", self._scores[split])
        self.meta.counts = dict(self._n)
        self.meta.class_pixels = {k: v.tolist() for k, v in self._px.items()}
        if self.write_index:
            self._write_index()
        write_json(self.tmp / "dataset.json", self.meta.to_dict())
        self._arr.clear()
        self._ctx.__exit__(None, None, None)
        return self.path

    def _write_index(self) -> None:
        import geopandas as gpd
        from shapely.geometry import box

        used: set[str] = set()
        cols = [_col_name(c.name, used) for c in self.meta.classes.classes]
        boxes = footprint_boxes(np.asarray([r["t"] for r in self._rows], dtype=np.float64),
                                self.meta.chip_size)
        records, geoms = [], []
        for r, fb in zip(self._rows, boxes, strict=True):
            geoms.append(box(*fb))
            src = self.meta.sources[r["source"]] if r["source"] < len(self.meta.sources) else {}
            rec = {"split": r["split"], "chip": r["chip"], "source": r["source"],
                   "image": str(src.get("image", "")), "col_off": r["col_off"],
                   "row_off": r["row_off"]}
            rec.update(dict(zip(cols, r["counts"], strict=True)))
            if r["split"] in self._scores:
                rec.update({k: v[r["chip"]].item() for k, v in score_attributes(
                    self._scores[r["split"]]).items()})
            records.append(rec)
        if not records:
            return
        gdf = gpd.GeoDataFrame(records, geometry=geoms, crs=self.meta.crs)
        with warnings.catch_warnings():  # pixel-space stores have no CRS on purpose
            warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
            gdf.to_file(self.tmp / "chips.gpkg", layer="chips", driver="GPKG")


def copy_store(src: str | Path, dst: str | Path) -> Path:
    """Copy a chip store folder (used by tests and experiments)."""
    shutil.copytree(src, dst)
    return Path(dst)


__all__ = ["ChipSplit", "ChipStore", "ChipStoreWriter", "IGNORE_INDEX", "SCORE_COLUMNS", "SPLITS",
           "StoreMeta", "TEST_SPLIT", "score_attributes", "score_ranks", "write_scored_index"]
