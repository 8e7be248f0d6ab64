"""``satsynth predict``, ``export`` and ``evaluate``: apply a trained segmenter to rasters of any
size, write it for other runtimes, score it."""

from __future__ import annotations

import argparse
import re
from typing import Any

from satsynth.cli_common import add_batch_size, add_command, add_device
from satsynth.contract import EXPORT_FORMATS, PREDICT_BATCH, RUNTIMES, PredictFields


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``predict``, ``export`` and ``evaluate`` sub-commands."""
    d = PredictFields()
    p = add_command(subparsers, common, "predict", run,
                    help="segment a raster of any size with a trained segmenter (styled GeoTIFF, "
                         "optional confidence raster and polygons)")
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
    p.add_argument("--tile", type=int, default=d.tile,
                   help="window size in pixels (default %(default)s)")
    p.add_argument("--overlap", type=int, default=d.overlap,
                   help="pixels shared by neighbouring windows, blended smoothly (default "
                        "%(default)s)")
    p.add_argument("--batch", type=int, default=d.batch,
                   help="windows per forward pass (default 0: the device's, "
                        + ", ".join(f"{v} on {k}" for k, v in PREDICT_BATCH.items()) + ")")
    add_device(p, d.device)
    p.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
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

    p = add_command(subparsers, common, "export", run_export,
                    help="write a trained segmenter as an ONNX model (ONNX Runtime, Deepness, "
                         "...)")
    p.add_argument("model", metavar="SEG_DIR", help="trained segmenter folder")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=EXPORT_FORMATS[0],
                   help=f"file format ({', '.join(EXPORT_FORMATS)})")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="file to write")
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile size the graph takes (default: predict's, {d.tile})")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"overlap recorded for Deepness, in pixels (default: predict's, "
                        f"{d.overlap})")

    p = add_command(subparsers, common, "evaluate", run_evaluate,
                    help="score a segmenter (mIoU, per-class IoU, confusion)")
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
    add_batch_size(p, 16)
    add_device(p)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate a trained segmenter on a dataset split or on a whole image with its label raster;
    writes report.json/.md/.html and confusion.png."""
    from satsynth.predict.evaluate import evaluate

    return evaluate(args.model, args.out, dataset=args.dataset, split=args.split,
                    image=args.image, labels=args.labels, device=args.device,
                    batch_size=args.batch_size, labels_on_image_grid=args.labels_on_image_grid)


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export the segmenter for TILE x TILE tiles and any batch size, checked against PyTorch on
    random input before it is kept. Input: tiles normalized as predict does; output: class
    probabilities. The file carries the class table, normalization, bands, pixel size, CRS and
    tile size, and the metadata Deepness reads (model_type, class_names, resolution in cm/px,
    tile size, overlap in percent, standardization)."""
    from satsynth.predict.export import export_segmenter

    return export_segmenter(args.model, args.out, fmt=args.format, tile=args.tile,
                            overlap=args.overlap)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sliding-window prediction streamed over the raster: memory depends on the tile size and
    the raster's width, not its area. Writes class ids (nodata 255) with a colour table, class
    names and a QGIS .qml style next to OUT."""
    from satsynth.predict.predict import predict_raster

    return predict_raster(
        args.model, args.image, args.out, confidence=args.confidence, vector=args.vector,
        tile=args.tile, overlap=args.overlap, batch=args.batch, device=args.device,
        extent=args.extent, mask=args.mask, match_resolution=args.match_resolution,
        cog=args.cog, simplify=args.simplify, min_area=args.min_area, runtime=args.runtime)
