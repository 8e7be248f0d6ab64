"""``predict_raster``: a trained segmenter applied to a raster of any size, streamed by windows.

Tiles are read with rasterio, normalized with the model's stored statistics, run in batches under
``torch.inference_mode`` (AMP on CUDA), blended with a smooth window (``blend``) and written row
band by row band (``writer``); memory depends on the tile size and the raster's width, never on
its area. Outputs appear at their final paths only when complete.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.contract import PredictFields, style_path
from satsynth.data.classes import write_qml
from satsynth.distributed import Processes, processes
from satsynth.errors import SatSynthError
from satsynth.io import atomic_path, temp_dir
from satsynth.outputs import check_output
from satsynth.predict.aoi import AreaOfInterest, bounds_to_window, parse_extent, tile_bounds
from satsynth.predict.bands import run_bands
from satsynth.predict.blend import BlendAccumulator, blend_window
from satsynth.predict.forward import Forward, TorchForward
from satsynth.predict.runtime import select_forward
from satsynth.predict.source import (
    TileReader,
    check_values,
    ground_resolution,
    matched_vrt,
    model_resolution,
    select_bands,
)
from satsynth.predict.vectorize import StreamingVectorizer
from satsynth.predict.windows import check_tiling, device_batch
from satsynth.predict.writer import PredictionWriter, aux_xml, to_cog
from satsynth.raster import TileGrid, crs_name, fmt_coord, open_raster, quiet_georef_warnings

log = logging.getLogger("satsynth")

#: GDAL block cache while predicting (MB): the input blocks a tile row spans (two block rows of a
#: 16384-wide RGB image) plus the output rows being written.
GDAL_CACHE_MB = 64
#: Warn when the image's pixel size differs from the model's by more than this fraction.
RESOLUTION_TOLERANCE = 0.25
#: Most tiles (run or skipped) held before their results are blended and progress is reported.
MAX_PENDING = 64


@dataclass
class Region:
    """A window of a dataset's pixel grid: where to predict and what the output covers."""

    row: int
    col: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the reader thread starts: with one arena per thread, the
    tile buffers freed by the main thread fragment the reader's arena and resident memory creeps
    up with the raster's area (measured: +86 MB between 8192x1024 and 8192x8192, +14 MB capped).
    No-op where glibc is absent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def predict_raster(model_dir: str | Path, image: str | Path, out: str | Path, *,
                   confidence: str | Path | None = None, vector: str | Path | None = None,
                   tile: int = PredictFields.tile, overlap: int = PredictFields.overlap,
                   batch: int = PredictFields.batch, device: str = PredictFields.device,
                   extent: str | Sequence[float] | None = None, mask: str | Path | None = None,
                   match_resolution: bool = False, cog: bool = False, simplify: float = 0.0,
                   min_area: float = 0.0, runtime: str = PredictFields.runtime
                   ) -> dict[str, Any]:
    """Predict classes over ``image`` with the segmenter in ``model_dir`` and write ``out``.

    ``out`` is a tiled, compressed GeoTIFF (a COG with ``cog=True``) on the image's grid (cropped
    to ``extent``/``mask``) holding class ids, 255 where the image has no data or outside the
    mask, styled with the class table (colour table, class names, ``.aux.xml`` attribute table,
    ``.qml`` sidecar). ``confidence``: a uint8 raster of the top probability x 255 (0 = nodata).
    ``vector``: class polygons in a GeoPackage. ``runtime``: the forward's, ``torch``, ``onnx``
    or ``auto`` (:func:`satsynth.predict.runtime.select_forward`). Returns the output paths,
    ``pixels``, ``seconds`` and ``runtime``."""
    import rasterio
    import torch

    from satsynth.segmenter.model import input_multiple, load_segmenter

    start = time.monotonic()
    image, out = Path(image), Path(out)
    conf_path = Path(confidence) if confidence else None
    vec_path = Path(vector) if vector else None
    _check_paths(image, out, conf_path, vec_path, inputs=(model_dir, image, mask))
    if simplify < 0 or min_area < 0:
        raise SatSynthError("--simplify and --min-area must not be negative")
    box = parse_extent(extent)

    procs = processes(device)  # one, or those of accelerate launch / torchrun: bands of rows
    dev = procs.device
    model, cfg = load_segmenter(model_dir, dev)
    table, normalizer = cfg.classes, cfg.normalization
    if normalizer.bands != cfg.in_channels:
        raise SatSynthError(f"config.json: normalization has {normalizer.bands} bands but the "
                            f"model takes {cfg.in_channels}", Path(model_dir))
    multiple = input_multiple(model)
    batch = device_batch(batch, dev)
    check_tiling(tile, overlap, batch, multiple, cfg.arch)
    amp = dev.type == "cuda"
    forward = select_forward(runtime, model_dir, model, cfg, dev, overlap, tile)
    log.info("model: %s/%s, %d classes, %d bands; device %s", cfg.arch, cfg.encoder,
             len(table), cfg.in_channels, dev)

    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        src = stack.enter_context(open_raster(image, "image"))
        indexes = select_bands(src, cfg.in_channels, image)
        check_values(src, indexes, normalizer, image)
        aoi = AreaOfInterest(mask, src.crs) if mask else None
        region = _region(src, box, aoi, image)
        scale = _resolution_scale(src, cfg, image, match_resolution)
        with quiet_georef_warnings():
            out_transform = src.window_transform(
                rasterio.windows.Window(region.col, region.row, region.width, region.height))
        log.info("%s: %d x %d px (%s), predicting %d x %d px", image.name, src.width,
                 src.height, crs_name(src.crs), region.width, region.height)
        lut = table.index_to_id_lut()
        run = dict(model=forward, device=dev, amp=amp, num_classes=len(table), tile=tile,
                   overlap=overlap, batch=batch, multiple=multiple, lut=lut, aoi=aoi)
        scratch = stack.enter_context(procs.scratch(out, "bands")) if procs.distributed else None
        if not procs.is_main:  # another process of a distributed run: its band of rows only
            with torch.inference_mode(), procs.progress_on_main():
                _predict_region(src, indexes, normalizer, image, region, out_transform, scale,
                                None, None, procs, scratch, **run)
            procs.barrier()  # until the main process has written the outputs
            return {"prediction": str(out), "process": procs.rank, "processes": procs.world}

        # temporary outputs, renamed onto the final paths only when everything is done
        tmp_out = stack.enter_context(atomic_path(out))
        tmp_aux = stack.enter_context(atomic_path(out.with_name(out.name + ".aux.xml")))
        qml = style_path(out)
        tmp_qml = stack.enter_context(atomic_path(qml))
        tmp_conf = stack.enter_context(atomic_path(conf_path)) if conf_path else None
        tmp_vec = stack.enter_context(atomic_path(vec_path)) if vec_path else None
        vec_qml = style_path(vec_path) if vec_path else None  # the raster's, when named alike
        tmp_vec_qml = (stack.enter_context(atomic_path(vec_qml))
                       if vec_qml and vec_qml.resolve() != qml.resolve() else None)
        work = stack.enter_context(temp_dir(out, "work"))

        vectorizer = None
        if tmp_vec is not None:
            vectorizer = StreamingVectorizer(tmp_vec, crs=src.crs, transform=out_transform,
                                             table=table, layer=vec_path.stem,  # type: ignore[union-attr]
                                             simplify=simplify, min_area=min_area,
                                             style=tmp_vec_qml)
        cls_target = work / "prediction.tif" if cog else tmp_out
        conf_target = (work / "confidence.tif" if cog else tmp_conf) if tmp_conf else None
        writer = PredictionWriter(cls_target, width=region.width, height=region.height,
                                  crs=src.crs, transform=out_transform, table=table,
                                  confidence_path=conf_target, aoi=aoi, vectorizer=vectorizer)
        stack.callback(writer.close)
        with torch.inference_mode():
            _predict_region(src, indexes, normalizer, image, region, out_transform, scale,
                            writer, work, procs, scratch, **run)
        writer.close()
        if not writer.complete:
            raise RuntimeError("the prediction raster was not completely written")
        if vectorizer is not None:
            vectorizer.close()
            log.info("%d polygons written to %s", vectorizer.features, vec_path)
        if cog:
            with progress.task("write COG", total=None):
                to_cog(cls_target, tmp_out, "MODE")
                if conf_target is not None and tmp_conf is not None:
                    to_cog(conf_target, tmp_conf, "AVERAGE")
        tmp_aux.write_text(aux_xml(table), encoding="utf-8")
        write_qml(tmp_qml, table)
        for leftover in (tmp_out.with_name(tmp_out.name + ".aux.xml"),):
            leftover.unlink(missing_ok=True)

    procs.barrier()  # the other processes of a distributed run return now
    outputs: dict[str, Any] = {"prediction": str(out), "style": str(qml)}
    if conf_path:
        outputs["confidence"] = str(conf_path)
    if vec_path:
        outputs["vector"] = str(vec_path)
    outputs["pixels"] = region.pixels
    outputs["seconds"] = round(time.monotonic() - start, 2)
    outputs["runtime"] = forward.name
    return outputs


def _check_paths(image: Path, out: Path, conf: Path | None, vec: Path | None,
                 inputs: Sequence[str | Path | None]) -> None:
    finals = [p.resolve() for p in (out, conf, vec) if p is not None]
    if len(set(finals)) != len(finals):
        raise SatSynthError("--out, --confidence and --vector must be different files")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise SatSynthError("the prediction is written as GeoTIFF: use a .tif name", out)
    if conf is not None and conf.suffix.lower() not in (".tif", ".tiff"):
        raise SatSynthError("the confidence raster is written as GeoTIFF: use a .tif name", conf)
    if vec is not None and vec.suffix.lower() != ".gpkg":
        raise SatSynthError("polygons are written to a GeoPackage: use a .gpkg name", vec)
    for p in (out, style_path(out), conf, vec, style_path(vec) if vec else None):
        if p is not None:
            check_output(p, "file", inputs=inputs)


def _region(src: Any, box: tuple[float, float, float, float] | None,
            aoi: AreaOfInterest | None, image: Path) -> Region:
    """The window of the image to predict: all of it, or the part under --extent / --mask."""
    with quiet_georef_warnings():
        transform, bounds = src.transform, tuple(src.bounds)
    r0, c0, r1, c1 = 0, 0, src.height, src.width
    b = ", ".join(fmt_coord(v) for v in bounds)
    if box is not None:
        w = bounds_to_window(box, transform, src.width, src.height)
        if w is None:
            raise SatSynthError(f"--extent {', '.join(fmt_coord(v) for v in box)} does not overlap "
                                f"the image (its bounds are {b} in {crs_name(src.crs)})", image)
        r0, c0, r1, c1 = w[0], w[1], w[0] + w[2], w[1] + w[3]
    if aoi is not None:
        w = bounds_to_window(aoi.bounds, transform, src.width, src.height)
        if w is None or not aoi.intersects_box(*bounds):
            raise SatSynthError(f"the --mask polygons ({aoi.path.name}) do not overlap the image "
                                f"(its bounds are {b} in {crs_name(src.crs)})", image)
        r0, c0 = max(r0, w[0]), max(c0, w[1])
        r1, c1 = min(r1, w[0] + w[2]), min(c1, w[1] + w[3])
        if r1 <= r0 or c1 <= c0:
            raise SatSynthError("--extent and the --mask polygons do not overlap each other "
                                "on the image", image)
    return Region(r0, c0, r1 - r0, c1 - c0)


def _resolution_scale(src: Any, cfg: Any, image: Path, match: bool
                      ) -> tuple[float, float] | None:
    """Warn about a pixel-size mismatch; with ``match``, the (x, y) factor to resample by."""
    with quiet_georef_warnings():
        img = ground_resolution(src.crs, src.transform, src.width, src.height)
    mod = model_resolution(cfg.crs, cfg.pixel_size, src.crs, src.transform, src.width,
                           src.height) if img else None
    if img is None or mod is None:
        why = ("the image has no CRS" if img is None else
               "the model does not record its training pixel size and CRS")
        if match:
            raise SatSynthError(f"--match-resolution needs both ground resolutions, but {why}",
                                image)
        log.debug("resolution check skipped: %s", why)
        return None
    diff = max(abs(img[0] / mod[0] - 1.0), abs(img[1] / mod[1] - 1.0))
    desc = (f"the image's pixels are {img[0]:.3g} x {img[1]:.3g} m, the model was trained on "
            f"{mod[0]:.3g} x {mod[1]:.3g} m")
    if match:
        if diff <= 0.01:
            log.info("%s: no resampling needed", desc)
            return None
        log.info("%s: resampling on the fly", desc)
        return mod[0] / img[0], mod[1] / img[1]
    if diff > RESOLUTION_TOLERANCE:
        log.warning("%s (%.0f%% apart): predictions may be poor; --match-resolution resamples "
                    "the image to the model's resolution on the fly", desc, 100 * diff)
    return None


def _forward(model: Any, x: np.ndarray, weight: Any, device: Any, amp: bool) -> np.ndarray:
    """Weighted class probabilities ``(N, K, h, w)`` of a batch of normalized tiles; ``model``
    is a :class:`~satsynth.predict.forward.Forward` (a bare torch module runs on PyTorch)."""
    forward = model if isinstance(model, Forward) else TorchForward(model, device, amp)
    probs = forward(x)
    if probs.shape[-2:] != x.shape[-2:]:
        raise SatSynthError(f"the model returned {tuple(probs.shape[-2:])} px for "
                            f"{tuple(x.shape[-2:])} px tiles; choose another --tile")
    return probs.mul_(weight).cpu().numpy()


def _run_tiles(reader: TileReader, region: Region, writer: PredictionWriter, *, model: Any,
               device: Any, amp: bool, num_classes: int, tile: int, overlap: int, batch: int,
               multiple: int, lut: np.ndarray, aoi: AreaOfInterest | None,
               stage: str = "predict", tile_rows: range | None = None) -> None:
    """Sliding-window prediction of ``region`` of the reader's dataset into ``writer`` (only the
    tile rows ``tile_rows``, in a distributed run: see :mod:`satsynth.predict.bands`)."""
    import torch

    grid = TileGrid.for_region(region.height, region.width, tile, overlap, multiple)
    tile_rows = tile_rows if tile_rows is not None else range(grid.shape[0])
    total = len(tile_rows) * grid.shape[1]
    acc = BlendAccumulator(grid, num_classes, confidence=writer.wants_confidence)
    weight = torch.from_numpy(blend_window(grid.tile_h, grid.tile_w, overlap)).to(device)
    last_col = grid.shape[1] - 1
    pending: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []
    n_run = 0
    log.debug("%d tiles of %d x %d px (%d x %d)", len(grid), grid.tile_w, grid.tile_h,
              *grid.shape)

    with progress.task(stage, total=total, unit="tile") as task:

        def flush() -> None:
            nonlocal pending, n_run
            arrays = [d for _, _, d, _ in pending if d is not None]
            probs = _forward(model, np.stack(arrays), weight, device, amp) if arrays else None
            i = 0
            for k, j, data, valid in pending:
                if data is not None:
                    acc.add(k, j, probs[i], valid)  # type: ignore[index]
                    i += 1
                acc.finish_tile(k, j)
                if j == last_col:
                    row, idx, conf = acc.finish_row(k)
                    writer.add(row, lut[idx], conf)
            done = len(pending)
            n_run += len(arrays)
            pending = []
            task.update(done, message=f"{int(task.n) + done}/{total} tiles",
                        tiles_run=n_run)

        with _prefetch(_read_tiles(grid, region, reader, aoi, tile_rows),
                       depth=2 * batch) as tiles:
            for item in tiles:
                pending.append(item)
                if (sum(p[2] is not None for p in pending) >= batch
                        or len(pending) >= MAX_PENDING):
                    flush()
        if pending:
            flush()


Tile = tuple[int, int, "np.ndarray | None", "np.ndarray | None"]


def _read_tiles(grid: TileGrid, region: Region, reader: TileReader,
                aoi: AreaOfInterest | None, tile_rows: range) -> Iterator[Tile]:
    """``(k, j, data, valid)`` per tile of ``tile_rows`` in order; data ``None`` for tiles with
    nothing to predict (outside the mask or all nodata), which are not read or not run."""
    ds_transform = reader.ds.transform
    for k, j, y, x in grid.tiles():
        if k not in tile_rows:
            continue
        h, w = min(grid.tile_h, region.height - y), min(grid.tile_w, region.width - x)
        row, col = region.row + y, region.col + x
        if aoi is not None and not aoi.intersects_box(*tile_bounds(ds_transform, row, col, h, w)):
            yield k, j, None, None
            continue
        data, valid = reader.read(row, col, grid.tile_h, grid.tile_w)
        yield (k, j, data, valid) if valid[:h, :w].any() else (k, j, None, None)


@contextmanager
def _prefetch(items: Iterator[Tile], depth: int) -> Iterator[Iterator[Tile]]:
    """Produce ``items`` in a background thread (reading and decoding overlap the model's
    forward pass; GDAL releases the GIL). Errors are re-raised in the consumer; leaving the
    block early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    def consume() -> Iterator[Tile]:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    _limit_malloc_arenas()
    thread = threading.Thread(target=produce, name="satsynth-read-tiles", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _predict_region(src: Any, indexes: list[int], normalizer: Any, image: Path, region: Region,
                    out_transform: Any, scale: tuple[float, float] | None,
                    writer: PredictionWriter | None, work: Path | None, procs: Processes,
                    scratch: Path | None, **run: Any) -> None:
    """The model over ``region`` into ``writer``, on the image grid or resampled; in a
    distributed run every process does its band of rows and the main one assembles them
    (``writer`` and ``work`` are None on the others)."""
    if scale is None:
        run_bands(_run_tiles, TileReader(src, indexes, normalizer, image), region, writer, procs,
                  scratch, **run)
    else:
        _predict_resampled(src, indexes, normalizer, image, region, out_transform, scale, writer,
                           work, procs, scratch, **run)


def _predict_resampled(src: Any, indexes: list[int], normalizer: Any, image: Path,
                       region: Region, out_transform: Any, scale: tuple[float, float],
                       writer: PredictionWriter | None, work: Path | None, procs: Processes,
                       scratch: Path | None, **run: Any) -> None:
    """--match-resolution: predict on a WarpedVRT at the model's pixel size, then bring the
    result back onto the image grid (nearest neighbour) into ``writer``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from satsynth.predict.aoi import tile_bounds as bounds_of

    with matched_vrt(src, *scale) as vrt:
        vwin = bounds_to_window(bounds_of(out_transform, 0, 0, region.height, region.width),
                                vrt.transform, vrt.width, vrt.height)
        if vwin is None:  # cannot happen for a region inside the image; be explicit anyway
            raise SatSynthError("the area to predict vanished when resampling", image)
        vregion = Region(*vwin)
        vtransform = vrt.window_transform(Window(vregion.col, vregion.row, vregion.width,
                                                 vregion.height))
        log.info("resampled grid: %d x %d px", vregion.width, vregion.height)
        want_conf = writer is not None and writer.wants_confidence
        inner = None
        if writer is not None and work is not None:
            tmp_cls, tmp_conf = work / "model_grid.tif", work / "model_grid_conf.tif"
            inner = PredictionWriter(tmp_cls, width=vregion.width, height=vregion.height,
                                     crs=src.crs, transform=vtransform,
                                     confidence_path=tmp_conf if want_conf else None)
        try:
            run_bands(_run_tiles, TileReader(vrt, indexes, normalizer, image), vregion, inner,
                      procs, scratch, **run)
        finally:
            if inner is not None:
                inner.close()
    if writer is None:
        return

    step = 512
    opened = [rasterio.open(tmp_cls)] + ([rasterio.open(tmp_conf)] if want_conf else [])
    with ExitStack() as stack:
        vrts = [stack.enter_context(WarpedVRT(
            ds, crs=src.crs, transform=out_transform, width=region.width, height=region.height,
            resampling=Resampling.nearest, nodata=ds.nodata)) for ds in opened]
        for ds in opened:
            stack.callback(ds.close)
        rows = range(0, region.height, step)
        for r in progress.track(rows, "resample to the image grid", unit="block"):
            win = Window(0, r, region.width, min(step, region.height - r))
            ids = vrts[0].read(1, window=win)
            conf = vrts[1].read(1, window=win) if want_conf else None
            writer.add(r, ids, conf)
