"""``predict_raster``: a trained segmenter applied to a raster of any size, streamed by windows.

One chip's walk, downwards through the modules: the image's tiles are read and normalized
(``source``) over the region to predict (``windows``), run in batches through the forward
(``runtime``: PyTorch under ``torch.inference_mode``, AMP on CUDA, or ONNX Runtime) by the
sliding window (``tiles``, split across processes by ``bands``, resampled by ``resample``),
blended with a smooth window (``blend``) and written row band by row band (``writer``, which hands
each block row to ``vectorize``). Memory depends on the tile size and the raster's width, never on
its area. Outputs appear at their final paths only when complete. This module only puts the steps
in order: :class:`~satsynth.predict.plan.PredictPlan` holds what was asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from satsynth import progress
from satsynth.contract import PredictFields
from satsynth.data.classes import ClassTable, write_qml
from satsynth.distributed import Processes, processes
from satsynth.errors import SatSynthError
from satsynth.io import atomic_path, temp_dir
from satsynth.predict.aoi import AreaOfInterest
from satsynth.predict.bands import run_bands
from satsynth.predict.forward import Forward
from satsynth.predict.plan import PredictPlan
from satsynth.predict.resample import predict_resampled
from satsynth.predict.runtime import select_forward
from satsynth.predict.source import TileReader, check_values, resolution_scale, select_bands
from satsynth.predict.vectorize import StreamingVectorizer
from satsynth.predict.windows import Region, TilePlan, check_tiling, device_batch, predict_region
from satsynth.predict.writer import PredictionWriter, aux_xml, to_cog
from satsynth.raster import crs_name, open_raster, quiet_georef_warnings

log = logging.getLogger("satsynth")

#: GDAL block cache while predicting (MB): the input blocks a tile row spans (two block rows of a
#: 16384-wide RGB image) plus the output rows being written.
GDAL_CACHE_MB = 64


def predict_raster(model_dir: str | Path, image: str | Path, out: str | Path, *,
                   confidence: str | Path | None = None, vector: str | Path | None = None,
                   tile: int = PredictFields.tile, overlap: int = PredictFields.overlap,
                   batch: int = PredictFields.batch, device: str = PredictFields.device,
                   extent: str | Sequence[float] | None = None, mask: str | Path | None = None,
                   match_resolution: bool = False, cog: bool = False, simplify: float = 0.0,
                   min_area: float = 0.0, runtime: str = PredictFields.runtime
                   ) -> dict[str, Any]:
    """Predict classes over ``image`` with the segmenter in ``model_dir`` and write ``out``.

    ``out`` is a tiled, compressed GeoTIFF on the image's grid (cropped to ``extent``/``mask``)
    holding class ids, 255 where the image has no data or outside the mask, styled with the class
    table (colour table, class names, ``.aux.xml`` attribute table, ``.qml`` sidecar).

    Args:
        model_dir: a trained segmenter folder.
        image: the raster to segment (any GDAL format), with the model's bands.
        out: the class GeoTIFF (``.tif``) to write.
        confidence: also write the top class probability x 255 here (uint8, 0 = nodata).
        vector: also write class polygons into this GeoPackage.
        tile: window side in pixels.
        overlap: pixels shared by neighbouring windows, blended smoothly.
        batch: windows per forward pass (0: the device's, ``contract.PREDICT_BATCH``).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        extent: only predict this box, ``"xmin,ymin,xmax,ymax"`` in the image's CRS.
        mask: only predict inside these polygons (any CRS); nodata outside.
        match_resolution: resample the image on the fly to the model's training pixel size.
        cog: write Cloud Optimized GeoTIFFs (with overviews).
        simplify: polygon simplification tolerance in metres (0: exact pixel edges).
        min_area: drop polygons smaller than this many square metres.
        runtime: the forward's, ``torch``, ``onnx`` or ``auto``
            (:func:`satsynth.predict.runtime.select_forward`).

    Returns:
        The output paths (``prediction``, ``style``, ``confidence``, ``vector``), ``pixels``,
        ``seconds`` and ``runtime`` (in a distributed run, the other processes return
        ``prediction``, ``process`` and ``processes``).
    """
    plan = PredictPlan.build(model_dir, image, out, confidence=confidence, vector=vector,
                             extent=extent, mask=mask, tile=tile, overlap=overlap, batch=batch,
                             device=device, runtime=runtime, match_resolution=match_resolution,
                             cog=cog, simplify=simplify, min_area=min_area)
    return run_plan(plan)


@dataclass
class _Image:
    """The open image as it will be predicted: its tile reader, the region and its georeference,
    the area of interest and the resampling factor (``--match-resolution``)."""

    reader: TileReader
    region: Region
    transform: Any
    aoi: AreaOfInterest | None
    scale: tuple[float, float] | None

    @property
    def src(self) -> Any:
        return self.reader.ds


@dataclass
class _Outputs:
    """The temporary files a run writes, renamed onto their final paths only when complete."""

    out: Path
    aux: Path
    qml: Path
    confidence: Path | None
    vector: Path | None
    work: Path
    writer: PredictionWriter
    vectorizer: StreamingVectorizer | None


def run_plan(plan: PredictPlan) -> dict[str, Any]:
    """Carry out a checked :class:`~satsynth.predict.plan.PredictPlan` (what
    :func:`predict_raster` does after building it).

    Args:
        plan: what to predict and write.

    Returns:
        As :func:`predict_raster`.
    """
    import rasterio
    import torch

    start = time.monotonic()
    procs = processes(plan.device)  # one, or those of accelerate launch / torchrun: bands of rows
    cfg, tiles = _load_model(plan, procs.device)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        img = _open_image(stack, plan, cfg)
        tiles = replace(tiles, aoi=img.aoi)
        scratch = (stack.enter_context(procs.scratch(plan.out, "bands")) if procs.distributed
                   else None)
        if not procs.is_main:  # another process of a distributed run: its band of rows only
            with torch.inference_mode(), procs.progress_on_main():
                _predict(img, None, None, tiles, procs, scratch)
            procs.barrier()  # until the main process has written the outputs
            return {"prediction": str(plan.out), "process": procs.rank,
                    "processes": procs.world}
        outputs = _open_outputs(stack, plan, img, cfg.classes)
        with torch.inference_mode():
            _predict(img, outputs.writer, outputs.work, tiles, procs, scratch)
        _finish_outputs(outputs, plan, cfg.classes)
    procs.barrier()  # the other processes of a distributed run return now
    return _summary(plan, img.region, tiles.forward, time.monotonic() - start)


def _load_model(plan: PredictPlan, device: Any) -> tuple[Any, TilePlan]:
    """The segmenter's forward for ``--runtime``, its config and the checked tiling."""
    from satsynth.segmenter.model import input_multiple, load_segmenter

    model, cfg = load_segmenter(plan.model_dir, device)
    if cfg.normalization.bands != cfg.in_channels:
        raise SatSynthError(f"config.json: normalization has {cfg.normalization.bands} bands but "
                            f"the model takes {cfg.in_channels}", plan.model_dir)
    multiple = input_multiple(model)
    batch = device_batch(plan.batch, device)
    check_tiling(plan.tile, plan.overlap, batch, multiple, cfg.arch)
    forward = select_forward(plan.runtime, plan.model_dir, model, cfg, device, plan.overlap,
                             plan.tile)
    log.info("model: %s/%s, %d classes, %d bands; device %s", cfg.arch, cfg.encoder,
             len(cfg.classes), cfg.in_channels, device)
    tiles = TilePlan(forward=forward, device=device, num_classes=len(cfg.classes),
                     tile=plan.tile, overlap=plan.overlap, batch=batch, multiple=multiple,
                     lut=cfg.classes.index_to_id_lut())
    return cfg, tiles


def _open_image(stack: ExitStack, plan: PredictPlan, cfg: Any) -> _Image:
    """Open the image (closed with ``stack``), check its bands and values against the model and
    find the region to predict."""
    from rasterio.windows import Window

    image = plan.image
    src = stack.enter_context(open_raster(image, "image"))
    indexes = select_bands(src, cfg.in_channels, image)
    check_values(src, indexes, cfg.normalization, image)
    aoi = AreaOfInterest(plan.mask, src.crs) if plan.mask else None
    region = predict_region(src, plan.box, aoi, image)
    scale = resolution_scale(src, cfg, image, plan.match_resolution)
    with quiet_georef_warnings():
        transform = src.window_transform(Window(region.col, region.row, region.width,
                                                region.height))
    log.info("%s: %d x %d px (%s), predicting %d x %d px", image.name, src.width, src.height,
             crs_name(src.crs), region.width, region.height)
    return _Image(TileReader(src, indexes, cfg.normalization, image), region, transform, aoi,
                  scale)


def _open_outputs(stack: ExitStack, plan: PredictPlan, img: _Image,
                  table: ClassTable) -> _Outputs:
    """Temporary outputs (renamed onto the final paths by ``stack`` only when everything is
    done) and the writer (and vectorizer) streaming into them."""
    tmp_out = stack.enter_context(atomic_path(plan.out))
    tmp_aux = stack.enter_context(atomic_path(plan.out.with_name(plan.out.name + ".aux.xml")))
    tmp_qml = stack.enter_context(atomic_path(plan.style))
    tmp_conf = stack.enter_context(atomic_path(plan.confidence)) if plan.confidence else None
    tmp_vec = stack.enter_context(atomic_path(plan.vector)) if plan.vector else None
    vec_style = plan.vector_style
    tmp_vec_qml = stack.enter_context(atomic_path(vec_style)) if vec_style else None
    work = stack.enter_context(temp_dir(plan.out, "work"))
    src, region = img.src, img.region
    vectorizer = None
    if tmp_vec is not None:
        vectorizer = StreamingVectorizer(tmp_vec, crs=src.crs, transform=img.transform,
                                         table=table, layer=plan.vector.stem,  # type: ignore[union-attr]
                                         simplify=plan.simplify, min_area=plan.min_area,
                                         style=tmp_vec_qml)
    cls_target = work / "prediction.tif" if plan.cog else tmp_out
    conf_target = (work / "confidence.tif" if plan.cog else tmp_conf) if tmp_conf else None
    writer = PredictionWriter(cls_target, width=region.width, height=region.height,
                              crs=src.crs, transform=img.transform, table=table,
                              confidence_path=conf_target, aoi=img.aoi, vectorizer=vectorizer)
    stack.callback(writer.close)
    return _Outputs(tmp_out, tmp_aux, tmp_qml, tmp_conf, tmp_vec, work, writer, vectorizer)


def _predict(img: _Image, writer: PredictionWriter | None, work: Path | None, tiles: TilePlan,
             procs: Processes, scratch: Path | None) -> None:
    """The model over the image's region into ``writer``, on the image's grid or resampled; in a
    distributed run every process does its band of rows and the main one assembles them
    (``writer`` and ``work`` are None on the others)."""
    if img.scale is None:
        run_bands(img.reader, img.region, writer, tiles, procs, scratch)
    else:
        predict_resampled(img.reader, img.region, img.transform, img.scale, writer, work, tiles,
                          procs, scratch)


def _finish_outputs(outputs: _Outputs, plan: PredictPlan, table: ClassTable) -> None:
    """Close the writer and vectorizer, convert to COG if asked, write the sidecars."""
    outputs.writer.close()
    if not outputs.writer.complete:
        raise RuntimeError("the prediction raster was not completely written")
    if outputs.vectorizer is not None:
        outputs.vectorizer.close()
        log.info("%d polygons written to %s", outputs.vectorizer.features, plan.vector)
    if plan.cog:
        with progress.task("write COG", total=None):
            to_cog(outputs.work / "prediction.tif", outputs.out, "MODE")
            if outputs.confidence is not None:
                to_cog(outputs.work / "confidence.tif", outputs.confidence, "AVERAGE")
    outputs.aux.write_text(aux_xml(table), encoding="utf-8")
    write_qml(outputs.qml, table)
    outputs.out.with_name(outputs.out.name + ".aux.xml").unlink(missing_ok=True)


def _summary(plan: PredictPlan, region: Region, forward: Forward, seconds: float
             ) -> dict[str, Any]:
    """What :func:`predict_raster` returns."""
    outputs: dict[str, Any] = {"prediction": str(plan.out), "style": str(plan.style)}
    if plan.confidence:
        outputs["confidence"] = str(plan.confidence)
    if plan.vector:
        outputs["vector"] = str(plan.vector)
    outputs["pixels"] = region.pixels
    outputs["seconds"] = round(seconds, 2)
    outputs["runtime"] = forward.name
    return outputs
