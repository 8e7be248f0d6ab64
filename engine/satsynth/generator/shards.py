"""Sampling batches across processes (``torchrun`` / ``accelerate launch``).

Each batch of pairs depends only on its place in the set (its initial noise on ``(seed, pair
index)``, its DDPM noise on ``(seed, first index)``, its class-share conditions on the set's
draw), so processes can sample disjoint batches and the set is the one a single process samples
with the same batch size. Every process samples a contiguous share of the batches and leaves
them in a scratch folder beside the output; after a barrier the main process takes them in order
and writes the one output folder (GeoTIFFs, chip store, VRTs, report) as a single process does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from satsynth.distributed import Processes, share

Batch = tuple[np.ndarray, np.ndarray, int, int]  # images, labels, invalid codes, UNet evals


def sampled_batches(procs: Processes, batches: int, sample: Callable[[int], Batch],
                    scratch: Path | None) -> Iterator[Batch]:
    """``sample(b)`` for every batch ``b`` in order: computed here in a single process; in a
    distributed run each process samples its share into ``scratch`` and only the main process
    yields (all of them, once every process is done)."""
    if not procs.distributed:
        for b in range(batches):
            yield sample(b)
        return
    assert scratch is not None
    for b in share(batches, procs.rank, procs.world):
        imgs, labs, inv, evals = sample(b)
        tmp = scratch / f".batch-{b:06d}.{procs.rank}.npz"
        np.savez(tmp, images=imgs, labels=labs, invalid=inv, evals=evals)
        os.replace(tmp, _path(scratch, b))
    procs.barrier()
    if not procs.is_main:
        return
    for b in range(batches):
        path = _path(scratch, b)
        with np.load(path) as z:
            batch = (z["images"], z["labels"], int(z["invalid"]), int(z["evals"]))
        path.unlink()
        yield batch


def _path(scratch: Path, b: int) -> Path:
    return scratch / f"batch-{b:06d}.npz"


def batch_size_for(count: int, batch_size: int, world: int) -> int:
    """The batch size that gives each of ``world`` processes work (at most ``batch_size``)."""
    return max(1, min(batch_size, -(-count // world)))
