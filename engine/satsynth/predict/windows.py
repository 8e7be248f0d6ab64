"""Prediction tiling options and work sharing: which ``--tile``/``--overlap``/``--batch`` a model
can use, and which tile rows each process of a distributed run takes. The tiles themselves are
:class:`satsynth.raster.TileGrid`.
"""

from __future__ import annotations

from typing import Any

from satsynth.contract import PREDICT_BATCH
from satsynth.errors import SatSynthError
from satsynth.raster import TileGrid


def check_tiling(tile: int, overlap: int, batch: int, multiple: int, arch: str) -> None:
    """Clear errors for tile/overlap/batch values the model or the blending cannot use."""
    if tile < 16 or tile % multiple:
        raise SatSynthError(f"--tile {tile} must be at least 16 and a multiple of {multiple} for a "
                            f"{arch} model (e.g. 256, 512 or 1024)")
    if not 0 <= overlap <= tile // 2:
        raise SatSynthError(f"--overlap {overlap} must be between 0 and half the tile "
                            f"({tile // 2} for --tile {tile})")
    if batch < 1:
        raise SatSynthError(f"--batch {batch} must be at least 1 (or 0: the device's default)")


def device_batch(batch: int, device: Any) -> int:
    """``--batch``, or for 0 (the default) the device type's (:data:`PREDICT_BATCH`): one tile at
    a time on a CPU, where a bigger batch only costs memory; 8 on a GPU."""
    if batch:
        return batch
    return PREDICT_BATCH.get(getattr(device, "type", str(device)), PREDICT_BATCH["cuda"])


def rows_for_rank(grid: TileGrid, rank: int, world: int) -> tuple[range, int, int]:
    """Process ``rank``'s part of a distributed prediction: ``(tile_rows, y0, y1)``.

    Each process owns a contiguous band of tile rows and writes the region rows ``[y0, y1)`` that
    become final in them (from the start of its first tile row to the start of the next
    process's). It also runs, before its band, the earlier tile rows that overlap row ``y0``, so
    every pixel it writes is blended from the same tiles, in the same order, as in a
    single-process run. A process with no tile row gets ``y0 == y1``."""
    from satsynth.distributed import share

    starts = grid.rows.starts
    own = share(len(starts), rank, world)
    if not own:
        return range(0), 0, 0
    y0 = starts[own.start]
    y1 = starts[own.stop] if own.stop < len(starts) else grid.height
    first = next(t for t, s in enumerate(starts) if s + grid.tile_h > y0)
    return range(first, own.stop), y0, y1
