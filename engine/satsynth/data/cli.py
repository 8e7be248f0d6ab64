"""Command line of the data stage: ``satsynth prepare`` and ``satsynth info``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from satsynth import progress
from satsynth.cli_common import add_command, add_seed
from satsynth.contract import LAYOUTS, PrepareFields

_PREP = PrepareFields()


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` and ``info`` sub-commands."""
    p = add_command(subparsers, common, "prepare", prepare_command,
                    help="cut labeled rasters into training chips (a dataset folder)")
    src = p.add_argument_group("inputs (one of --labels, --vector, --folder)")
    src.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="image raster (any GDAL format); repeat for several")
    src.add_argument("--labels", action="append", default=[], metavar="PATH",
                     help="single-band raster of class ids, one per --image in the same order")
    src.add_argument("--vector", action="append", default=[], metavar="PATH",
                     help="vector labels (GeoPackage, GeoJSON, Shapefile): one per --image, or "
                          "one for all")
    src.add_argument("--layer", metavar="NAME", help="layer of the vector file (GeoPackage)")
    src.add_argument("--class-field", metavar="FIELD",
                     help="attribute holding each feature's class name or id (default: every "
                          "feature is one class, named after the file)")
    src.add_argument("--line-buffer", type=float, default=_PREP.line_buffer, metavar="METRES",
                     help="buffer distance (half width) in metres for lines and points, e.g. "
                          "roads (default 0: lines are burnt one pixel wide)")
    src.add_argument("--all-touched", action="store_true",
                     help="burn every pixel a feature touches (default: pixel centres inside)")
    bg = src.add_mutually_exclusive_group()
    bg.add_argument("--background", default=_PREP.background, metavar="NAME",
                    help="class for pixels no feature covers (default 'background', id 0)")
    bg.add_argument("--background-ignore", action="store_true",
                    help="do not train on pixels no feature covers")
    src.add_argument("--folder", metavar="DIR",
                     help="folder with images/ and masks/ sub-folders (searched recursively), "
                          "masks matched by file name")
    src.add_argument("--layout", choices=LAYOUTS,
                     help="--folder is this published dataset as downloaded: its folder "
                          "structure, file names, label coding, class table and official "
                          "train/val split are used (see docs/data.md)")
    src.add_argument("--labels-on-image-grid", action="store_true",
                     help="the label rasters were drawn on the image's pixels (same size, e.g. "
                          "an annotation tool's export without georeference): take the image's "
                          "grid for them (refused when the sizes differ)")
    p.add_argument("--classes", metavar="FILE",
                   help="class table (JSON/YAML: id, name, colour; ignore_ids/ignore_colors); "
                        "default DIR/classes.json for --folder, else inferred from the labels")
    p.add_argument("--out", required=True, metavar="DATASET", help="dataset folder to write")
    p.add_argument("--chip-size", type=int, default=_PREP.chip_size,
                   help=f"chip size in pixels (default {_PREP.chip_size})")
    p.add_argument("--stride", type=int, help="step between chips (default: the chip size)")
    p.add_argument("--val-fraction", type=float, default=_PREP.val_fraction,
                   help="share of chips held out for validation, by spatial blocks (default "
                        f"{_PREP.val_fraction:g})")
    p.add_argument("--val-sources", metavar="PATTERNS", default="",
                   help="comma-separated parts of source paths that go wholly to validation, "
                        "e.g. 'Tile 6,Tile 7' (then --val-fraction is not used)")
    p.add_argument("--test-fraction", type=float, default=_PREP.test_fraction,
                   help="share of chips held out for the final test, by spatial blocks (default "
                        "0: no test split); the test split is read only by the final evaluation")
    p.add_argument("--test-sources", metavar="PATTERNS", default="",
                   help="comma-separated parts of source paths that go wholly to the test split, "
                        "e.g. 'Tile 7' (then --test-fraction is not used)")
    p.add_argument("--block-size", type=int, default=_PREP.block_size,
                   help=f"side of a spatial split block, in chips (default {_PREP.block_size})")
    add_seed(p, _PREP.seed, "random seed of the split")
    p.add_argument("--min-labeled", type=float, default=_PREP.min_labeled,
                   help=f"skip chips with a smaller labeled fraction (default {_PREP.min_labeled:g})")
    p.add_argument("--max-chips", type=int, help="keep at most this many chips (quick runs)")

    r = add_command(subparsers, common, "subset", subset_command,
                    help="a low-data dataset: a seeded random share of the training chips")
    r.add_argument("dataset", metavar="DATASET", help="dataset folder written by 'prepare'")
    r.add_argument("--out", required=True, metavar="SUBSET", help="dataset folder to write")
    pick = r.add_mutually_exclusive_group(required=True)
    pick.add_argument("--train-fraction", type=float, help="share of the training chips, e.g. "
                      "0.025")
    pick.add_argument("--max-train-chips", type=int, help="number of training chips")
    add_seed(r, 0, "seed of the random pick")
    r.add_argument("--max-val-chips", type=int, help="keep at most this many validation chips")
    r.add_argument("--max-test-chips", type=int, help="keep at most this many test chips")

    q = add_command(subparsers, common, "info", info_command,
                    help="describe a dataset: chips, bands, CRS, class shares")
    q.add_argument("dataset", metavar="DATASET", help="dataset folder written by 'prepare'")
    q.add_argument("--json", action="store_true", help="print the description as JSON")


def prepare_command(args: argparse.Namespace) -> dict[str, Any]:
    """Cut image rasters and their labels (class-id rasters, vector layers, or a folder of colour
    masks) into chips with their georeference, split train/val by spatial blocks, and store them
    for training."""
    from satsynth.data.prepare import PrepareConfig, prepare_dataset
    from satsynth.data.store import ChipStore

    cfg = PrepareConfig(
        chip_size=args.chip_size, stride=args.stride, val_fraction=args.val_fraction,
        val_sources=args.val_sources, test_fraction=args.test_fraction,
        test_sources=args.test_sources, block_size=args.block_size, seed=args.seed,
        min_labeled=args.min_labeled, max_chips=args.max_chips, line_buffer=args.line_buffer,
        all_touched=args.all_touched, labels_on_image_grid=args.labels_on_image_grid,
        background=None if args.background_ignore else args.background)
    out = prepare_dataset(args.out, images=args.image, labels=args.labels, vectors=args.vector,
                          folder=args.folder, classes=args.classes, layer=args.layer,
                          class_field=args.class_field, config=cfg, layout=args.layout)
    store = ChipStore(out)
    return {"dataset": str(out), "chips": str(out / "chips.gpkg"),
            "train": store.meta.counts.get("train", 0), "val": store.meta.counts.get("val", 0),
            "test": store.meta.counts.get("test", 0),
            "classes": store.meta.classes.num_classes}


def subset_command(args: argparse.Namespace) -> dict[str, Any]:
    """Write a dataset holding a random share (or number) of DATASET's training chips, chosen
    reproducibly by --seed (the chips train-segmenter --real-fraction picks for that seed), with
    val and test copied whole or capped. Train the generator and the segmenter on it."""
    from satsynth.data.subset import subset_dataset

    return subset_dataset(args.dataset, args.out, train_fraction=args.train_fraction,
                          max_train_chips=args.max_train_chips, seed=args.seed,
                          max_val_chips=args.max_val_chips, max_test_chips=args.max_test_chips)


def info_command(args: argparse.Namespace) -> dict[str, Any]:
    """Describe a dataset (chips per split, bands, CRS, class shares): as lines, as JSON with
    --json, or as the outputs of the final event with --progress json."""
    from satsynth.data.info import dataset_info, format_info

    info = dataset_info(args.dataset)
    if progress.mode() == "json":
        return info
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return {}
