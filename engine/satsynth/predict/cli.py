"""``satsynth predict``, ``export`` and ``evaluate``: apply a trained segmenter to rasters of any
size, write it for other runtimes, score it."""

from __future__ import annotations

import argparse
import re
from typing import Any

from satsynth.predict.export import FORMATS
from satsynth.predict.runtime import RUNTIMES
from satsynth.predict.windows import DEFAULT_OVERLAP, DEFAULT_TILE


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``predict``, ``export`` and ``evaluate`` sub-commands."""
    p = subparsers.add_parser(
        "predict", parents=[common],
        help="segment a raster of any size with a trained segmenter (styled GeoTIFF, "
             "optional confidence raster and polygons)",
        description="Sliding-window prediction streamed over the raster: memory depends on the "
                    "tile size and the raster's width, not its area. Writes class ids (nodata "
                    "255) with a colour table, class names and a QGIS .qml style next to OUT.")
    p.add_argument("model", metavar="SEG_DIR", help="trained segmenter folder")
    p.add_argument("--image", required=True, metavar="IMG",
                   help="input raster (any GDAL format: GeoTIFF, VRT, JPEG2000, ...)")
    p.add_argument("--out", required=True, metavar="PRED.tif", help="class raster to write")
    p.add_argument("--confidence", metavar="CONF.tif",
                   help="also write the top class probability x 255 (uint8, 0 = nodata)")
    p.add_argument("--vector", metavar="PRED.gpkg",
                   help="also write class polygons (class_id, class_name, pixels, area_m2)")
    p.add_argument("--simplify", type=float, default=0.0, metavar="METRES",
                   help="simplify polygons with this tolerance (default 0: exact pixel edges)")
    p.add_argument("--min-area", type=float, default=0.0, metavar="M2",
                   help="drop polygons smaller than this area in square metres")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"window size in pixels (default {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                   help=f"pixels shared by neighbouring windows, blended smoothly (default "
                        f"{DEFAULT_OVERLAP})")
    p.add_argument("--batch", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="the forward pass: onnx (ONNX Runtime; exported into SEG_DIR once and "
                        "reused while the weights are unchanged), torch, or auto (default: "
                        "onnx on a CPU when onnxruntime is installed, else torch)")
    p.add_argument("--extent", metavar="XMIN,YMIN,XMAX,YMAX",
                   help="only predict this box (in the image's CRS)")
    p.add_argument("--mask", metavar="AOI.gpkg",
                   help="only predict inside these polygons (any CRS); nodata outside")
    p.add_argument("--match-resolution", action="store_true",
                   help="resample the image on the fly to the model's training pixel size "
                        "(result written on the image's grid)")
    p.add_argument("--cog", action="store_true",
                   help="write Cloud Optimized GeoTIFFs (with overviews)")
    # let "--extent -117.2,36.1,-117.1,36.2" (western / southern coordinates) be a value, as
    # Python >= 3.12 does; 3.10/3.11 take anything starting with "-" and a comma for an option
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    p.set_defaults(func=run)

    p = subparsers.add_parser(
        "export", parents=[common],
        help="write a trained segmenter as an ONNX model (ONNX Runtime, Deepness, ...)",
        description="Export the segmenter for TILE x TILE tiles and any batch size, checked "
                    "against PyTorch on random input before it is kept. Input: tiles normalized "
                    "as predict does; output: class probabilities. The file carries the class "
                    "table, normalization, bands, pixel size, CRS and tile size, and the "
                    "metadata Deepness reads (model_type, class_names, resolution in cm/px, "
                    "tile size, overlap in percent, standardization).")
    p.add_argument("model", metavar="SEG_DIR", help="trained segmenter folder")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format (onnx)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="file to write")
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile size the graph takes (default: predict's, {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"overlap recorded for Deepness, in pixels (default: predict's, "
                        f"{DEFAULT_OVERLAP})")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "evaluate", parents=[common], help="score a segmenter (mIoU, per-class IoU, confusion)",
        description="Evaluate a trained segmenter on a dataset split or on a whole image with "
                    "its label raster; writes report.json/.md/.html and confusion.png.")
    p.add_argument("model", metavar="SEG_DIR", help="segmenter model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="prepared dataset folder")
    src.add_argument("--image", help="image raster to segment")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--labels", help="reference label raster for --image (class ids or colours)")
    p.add_argument("--labels-on-image-grid", action="store_true",
                   help="--labels was drawn on the image's pixels (same size, no georeference): "
                        "take the image's grid for it (refused when the sizes differ)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--batch-size", type=int, default=16, help="chips per step (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``satsynth evaluate`` from parsed arguments."""
    from satsynth.predict.evaluate import evaluate

    return evaluate(args.model, args.out, dataset=args.dataset, split=args.split,
                    image=args.image, labels=args.labels, device=args.device,
                    batch_size=args.batch_size, labels_on_image_grid=args.labels_on_image_grid)


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``satsynth export`` from parsed arguments."""
    from satsynth.predict.export import export_segmenter

    return export_segmenter(args.model, args.out, fmt=args.format, tile=args.tile,
                            overlap=args.overlap)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``satsynth predict`` from parsed arguments."""
    from satsynth.predict.predict import predict_raster

    return predict_raster(
        args.model, args.image, args.out, confidence=args.confidence, vector=args.vector,
        tile=args.tile, overlap=args.overlap, batch=args.batch, device=args.device,
        extent=args.extent, mask=args.mask, match_resolution=args.match_resolution,
        cog=args.cog, simplify=args.simplify, min_area=args.min_area, runtime=args.runtime)
