"""Which chips a segmenter trains on: the real training chips D (optionally a fraction of them)
plus R |D| synthetic pairs D' drawn from one or more synthetic chip stores.

Validation always uses real chips only (the real store's ``val`` split). Every chip, real or
synthetic, is normalized with the *real* dataset's normalizer so the model sees one value scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satsynth.data.sources import refuse_repeats
from satsynth.data.store import ChipSplit, ChipStore
from satsynth.data.subset import real_subset
from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

REAL, SYNTHETIC = 0, 1


def synthetic_count(n_real: int, ratio: float) -> int:
    """|D'| = R |D|, rounded to the nearest chip (R may be fractional)."""
    if ratio < 0 or not np.isfinite(ratio):
        raise SatSynthError(f"--ratio must be a number >= 0, got {ratio}")
    return int(round(ratio * n_real))


def draw_synthetic(pool: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct chips of a pool of ``pool``; if the pool is smaller, all of it plus
    repeats (with a warning)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if count <= pool:
        return np.sort(rng.choice(pool, size=count, replace=False))
    log.warning("only %d synthetic chips for the %d asked (R |D|): some are used twice; "
                "synthesize more for a fair ratio", pool, count)
    extra = rng.choice(pool, size=count - pool, replace=True)
    return np.sort(np.concatenate([np.arange(pool), extra]))


def open_synthetic(paths: list[str | Path], real: ChipStore) -> list[ChipStore]:
    """Open synthetic stores and check they fit the real dataset (classes, bands, chip size)."""
    refuse_repeats([Path(p) for p in paths], "--synthetic")
    stores = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise SatSynthError("synthetic chip folder not found (run 'satsynth synthesize' "
                                "first)", p)
        s = ChipStore(p)
        check_compatible(real, s)
        if not s.has_split("train") or len(s.split("train")) == 0:
            raise SatSynthError("the synthetic store holds no chips", p)
        stores.append(s)
    return stores


def check_compatible(real: ChipStore, syn: ChipStore) -> None:
    """Raise a clear error when synthetic chips cannot be mixed with the real ones."""
    rm, sm = real.meta, syn.meta
    r_cls = [(c.id, c.name) for c in rm.classes.classes]
    s_cls = [(c.id, c.name) for c in sm.classes.classes]
    if r_cls != s_cls:
        def fmt(cls: list[tuple[int, str]]) -> str:
            return ", ".join(f"{i}={n}" for i, n in cls)

        raise SatSynthError(
            f"the synthetic chips have other classes than the real dataset {real.path}: "
            f"synthetic [{fmt(s_cls)}] vs real [{fmt(r_cls)}]; synthesize with a generator "
            f"trained on this dataset", syn.path)
    if sm.bands != rm.bands:
        raise SatSynthError(f"the synthetic chips have {sm.bands} band(s), the real dataset "
                            f"{real.path} has {rm.bands}", syn.path)
    if sm.chip_size != rm.chip_size:
        raise SatSynthError(f"the synthetic chips are {sm.chip_size} px, the real chips of "
                            f"{real.path} are {rm.chip_size} px", syn.path)
    if sm.dtype != rm.dtype:
        log.warning("%s: synthetic chips are %s, real chips %s: values are rescaled with the "
                    "real dataset's normalization", syn.path, sm.dtype, rm.dtype)
    if not sm.synthetic:
        log.warning("%s is not marked synthetic (dataset.json 'synthetic': false); using it as "
                    "extra training pairs anyway", syn.path)


@dataclass
class TrainingMix:
    """The chips of one training run: entries (source, index) over real and synthetic arrays."""

    real: ChipSplit
    synthetic: list[ChipSplit] = field(default_factory=list)
    real_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    synthetic_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_real(self) -> int:
        return int(len(self.real_indices))

    @property
    def n_synthetic(self) -> int:
        return int(len(self.synthetic_indices))

    def __len__(self) -> int:
        return self.n_real + self.n_synthetic

    def entries(self) -> np.ndarray:
        """(M, 2) int64 rows (kind, index): kind 0 real, 1 synthetic (index into the pool)."""
        r = np.stack([np.full(self.n_real, REAL), self.real_indices], 1)
        s = np.stack([np.full(self.n_synthetic, SYNTHETIC), self.synthetic_indices], 1)
        return np.concatenate([r, s]).astype(np.int64)

    def _pool_lookup(self, idx: np.ndarray) -> list[tuple[ChipSplit, np.ndarray, np.ndarray]]:
        bounds = np.cumsum([0] + [len(s) for s in self.synthetic])
        out = []
        for k, s in enumerate(self.synthetic):
            sel = np.nonzero((idx >= bounds[k]) & (idx < bounds[k + 1]))[0]
            if len(sel):
                out.append((s, sel, idx[sel] - bounds[k]))
        return out

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw images (B,C,S,S), labels (B,S,S) and a synthetic flag (B,) for ``rows`` of
        :meth:`entries`, in that order (reads are sorted and vectorized per array)."""
        b = len(rows)
        c, s = self.real.images.shape[1], self.real.images.shape[2]
        images = np.empty((b, c, s, s), dtype=np.float32)
        labels = np.empty((b, s, s), dtype=np.uint8)
        kinds, idx = rows[:, 0], rows[:, 1]
        parts: list[tuple[ChipSplit, np.ndarray, np.ndarray]] = []
        sel = np.nonzero(kinds == REAL)[0]
        if len(sel):
            parts.append((self.real, sel, idx[sel]))
        sel = np.nonzero(kinds == SYNTHETIC)[0]
        if len(sel):
            parts += [(arr, sel[local], j) for arr, local, j in self._pool_lookup(idx[sel])]
        for arr, where, j in parts:
            order = np.argsort(j, kind="stable")
            images[where[order]] = arr.images[j[order]]
            labels[where[order]] = arr.labels[j[order]]
        return images, labels, kinds == SYNTHETIC


def build_mix(real: ChipStore, synthetic: list[ChipStore], ratio: float, real_fraction: float = 1.0,
              subset_seed: int = 0, seed: int = 0, candidates: np.ndarray | None = None
              ) -> TrainingMix:
    """The training mix: a ``real_fraction`` of the real train chips (fixed by ``subset_seed``;
    only among ``candidates`` when given) and R |D| synthetic chips drawn once (by ``seed``) from
    the synthetic pool."""
    tr = real.split("train")
    base = np.arange(len(tr)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    real_idx = base[real_subset(len(base), real_fraction, subset_seed)]
    n_syn = synthetic_count(len(real_idx), ratio)
    pools = [s.split("train") for s in synthetic]
    pool = sum(len(p) for p in pools)
    if n_syn and not pools:
        raise SatSynthError(f"--ratio {ratio} needs synthetic chips: pass --synthetic SYN_DIR")
    syn_idx = draw_synthetic(pool, n_syn, seed + 7919)
    return TrainingMix(tr, pools, real_idx.astype(np.int64), syn_idx.astype(np.int64))


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, num_shards: int = 1,
                  shard: int = 0) -> list[np.ndarray]:
    """Shuffled batches over ``n`` entries; a trailing batch of one chip is dropped (batch norm
    needs two), and each of ``num_shards`` processes gets the same number of batches."""
    return order_batches(rng.permutation(n), batch_size, num_shards, shard)


class PairedOrder:
    """Epoch orders over a mix's entries (real rows first, then synthetic, as
    :meth:`TrainingMix.entries`) in which the real chips come in an order that depends on the
    seed alone: runs of one seed with and without synthetic chips visit the real chips in the
    same sequence (the synthetic chips are slotted in between by separate generators)."""

    def __init__(self, seed: int) -> None:
        self.real = np.random.default_rng([seed, 0])
        self.synthetic = np.random.default_rng([seed, 1])
        self.slots = np.random.default_rng([seed, 2])

    def epoch(self, n_real: int, n_synthetic: int) -> np.ndarray:
        """One epoch's order of the ``n_real + n_synthetic`` entries."""
        if n_real == 0:  # a synthetic-only phase leaves the real order untouched
            return self.synthetic.permutation(n_synthetic)
        real = self.real.permutation(n_real)
        if n_synthetic == 0:
            return real
        n = n_real + n_synthetic
        is_syn = np.zeros(n, dtype=bool)
        is_syn[self.slots.choice(n, size=n_synthetic, replace=False)] = True
        order = np.empty(n, dtype=np.int64)
        order[~is_syn] = real
        order[is_syn] = n_real + self.synthetic.permutation(n_synthetic)
        return order


def on_top_batches(order: PairedOrder, n_real: int, n_synthetic: int, batch_size: int,
                   num_shards: int = 1, shard: int = 0) -> list[np.ndarray]:
    """One epoch's batches with the real chips fixed per batch and the synthetic ones on top:
    the real chips form exactly the batches of the real-only run of this seed (``batch_size``
    real chips each, the same order), and the epoch's ``n_synthetic`` chips (R |D|) are dealt
    over those batches as evenly as possible (R x ``batch_size`` per batch), so every R sees the
    same real chips at every step. Entries as :meth:`TrainingMix.entries` (real rows first)."""
    real = order_batches(order.real.permutation(n_real), batch_size)
    if n_synthetic and real:
        syn = n_real + order.synthetic.permutation(n_synthetic)
        real = [np.concatenate([r, s]) for r, s in
                zip(real, np.array_split(syn, len(real)), strict=True)]
    usable = len(real) - len(real) % num_shards
    return real[shard:usable:num_shards]


def order_batches(order: np.ndarray, batch_size: int, num_shards: int = 1,
                  shard: int = 0) -> list[np.ndarray]:
    """Batches over entries in ``order``; a trailing batch of one chip is dropped (batch norm
    needs two), and each of ``num_shards`` processes gets the same number of batches."""
    n = len(order)
    perm = order
    batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    usable = len(batches) - len(batches) % num_shards
    return batches[shard:usable:num_shards]
