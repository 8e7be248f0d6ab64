"""The paper's datasets as they are downloaded: folder structure, file naming, label coding.

A *layout* is a declarative description (its class table with names, colours and ignore values,
the kind of masks) plus the discovery of its image/mask pairs and their official split. The pairs
are then read by the ordinary readers of :mod:`satsynth.data.labels` like any other
``PairSpec``: class-id masks (``raster``) or colour masks (``colors``).

- ``loveda``: ``{Train,Val,Test}/{Urban,Rural}/images_png/N.png`` + ``masks_png/N.png``, masks of
  class ids 1..7, 0 = no-data (Test has no published masks).
- ``openearthmap``: ``<region>/images/<region>_N.tif`` + ``<region>/labels/<region>_N.tif``,
  class ids 1..8, 0 = unknown; the official split in ``train.txt``/``val.txt``/``test.txt`` where
  present (file names, one a line; the test pairs go to the locked test split).
- ``isaid``: ``{train,val}/.../P0000.png`` + ``.../P0000_instance_color_RGB.png`` (the semantic
  masks, colour coded; the ``_instance_id_RGB`` masks are instance ids and are not read); 15
  classes plus background.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from satsynth.data.classes import ClassTable
from satsynth.data.sources import PairSpec
from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

# LoveDA (Wang et al., NeurIPS 2021 Datasets): label values and colours as in the authors' repo
# Junjue-Wang/LoveDA (COLOR_MAP of Semantic_Segmentation) and mmsegmentation's
# mmseg/datasets/loveda.py (same names and palette; 0 is the ignore index); TorchGeo's
# torchgeo/datasets/loveda.py: "No-data regions assigned with 0 and should be ignored".
# Each layout's classes: name -> colour, in the order of their label values (ids).
LOVEDA_CLASSES = {
    "background": "#ffffff",
    "building": "#ff0000",
    "road": "#ffff00",
    "water": "#0000ff",
    "barren": "#9f81b7",
    "forest": "#00ff00",
    "agriculture": "#ffc380",
}

# OpenEarthMap (Xia et al., WACV 2023): label values 0..8 and colours as in the authors' repo
# bao18/open_earth_map (oem/utils.py class_grey_oem / class_rgb_oem, whose early names Grass,
# Pavement, Cropland are the paper's rangeland, developed space, agriculture land); 0 = unknown.
OPENEARTHMAP_CLASSES = {
    "bareland": "#800000",
    "rangeland": "#00ff24",
    "developed space": "#949494",
    "road": "#ffffff",
    "tree": "#226126",
    "water": "#0045ff",
    "agriculture land": "#4bb549",
    "building": "#de1f07",
}

# iSAID (Waqas Zamir et al., CVPRW 2019), semantic masks *_instance_color_RGB.png: the RGB colour
# of each class as in mmsegmentation's tools/dataset_converters/isaid.py (iSAID_palette, read with
# channel_order='rgb') and mmseg/mmdet's iSAIDDataset (class order; background is a class there,
# reduce_zero_label=False). Ids are the converter's label values.
ISAID_CLASSES = {
    "background": "#000000",
    "ship": "#00003f",
    "storage tank": "#003f3f",
    "baseball diamond": "#003f00",
    "tennis court": "#003f7f",
    "basketball court": "#003fbf",
    "ground track field": "#003fff",
    "bridge": "#007f3f",
    "large vehicle": "#007f7f",
    "small vehicle": "#00007f",
    "helicopter": "#0000bf",
    "swimming pool": "#0000ff",
    "roundabout": "#00bf7f",
    "soccer ball field": "#007fbf",
    "plane": "#007fff",
    "harbor": "#00649b",
}

#: How the published split names map onto the splits prepare writes (the test split is held out
#: for the final evaluation, see docs/data.md).
OFFICIAL_SPLITS = {"train": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class Layout:
    """One published dataset: its class table (class names -> colours, their label values
    consecutive from ``first_id``; ``ignore_ids`` label no class), mask kind and how to find its
    pairs."""

    name: str
    title: str
    classes: dict[str, str]
    first_id: int
    ignore_ids: tuple[int, ...]
    mask_kind: str  # "raster" (class ids) or "colors"
    find: Callable[[Path], list[PairSpec]]
    #: drop the georeference when the images do not share one CRS (tiles from many regions)
    pixel_space_if_mixed_crs: bool = False

    def table(self) -> ClassTable:
        """The built-in class table."""
        classes = [{"id": i, "name": name, "color": color}
                   for i, (name, color) in enumerate(self.classes.items(), self.first_id)]
        return ClassTable.from_dict({"classes": classes, "ignore_ids": list(self.ignore_ids)},
                                    where=f"{self.title} class table")


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in suffixes} if folder.is_dir() else {}


def _pair_up(images: dict[str, Path], masks: dict[str, Path], split: str | None, kind: str,
             where: Path) -> list[PairSpec]:
    missing = sorted(set(images) - set(masks))
    if missing:
        log.warning("%s: %d images without a mask skipped (e.g. %s)", where, len(missing),
                    images[missing[0]].name)
    return [PairSpec(images[k], masks[k], kind, split=split) for k in sorted(images) if k in masks]


def _official_split(name: str) -> str | None:
    """Our split for a published split name, or None (logged) when prepare has no such split."""
    return OFFICIAL_SPLITS.get(name.lower())


def _split_pairs(images: dict[str, Path], masks: dict[str, Path], split_name: str, kind: str,
                 where: Path, without: str) -> list[PairSpec]:
    """The pairs of a folder of the published split ``split_name``; none (logged) when it has no
    masks (``without`` says which) or is a split prepare does not keep."""
    split = _official_split(split_name)
    if not masks or split is None:
        log.info("%s: %d images %s; not used", where, len(images), without if not masks else
                 f"of the official '{split_name}' split, which prepare does not keep")
        return []
    return _pair_up(images, masks, split, kind, where)


def _find_loveda(root: Path) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        for scene in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            images = _files(scene / "images_png", (".png",))
            if not images:
                continue
            masks = _files(scene / "masks_png", (".png",))
            pairs += _split_pairs(images, masks, split_dir.name, "raster", scene,
                                  "without published masks")
    return pairs


def _read_list(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SatSynthError(f"the split list is not UTF-8 text (byte {exc.start}): save it as "
                            "UTF-8, one file name a line", path) from None
    return {Path(line.strip()).stem for line in text.splitlines() if line.strip()}


def _find_openearthmap(root: Path) -> list[PairSpec]:
    lists = {name: _read_list(root / f"{name}.txt") for name in ("train", "val", "test")
             if (root / f"{name}.txt").is_file()}
    if lists:
        log.info("official split from %s", ", ".join(f"{n}.txt ({len(v)} files)"
                                                    for n, v in lists.items()))
    pairs: list[PairSpec] = []
    unlisted = dropped = 0
    for region in sorted(d for d in root.iterdir() if d.is_dir()):
        images = _files(region / "images", (".tif", ".tiff"))
        if not images:
            continue
        masks = _files(region / "labels", (".tif", ".tiff"))
        for spec in _pair_up(images, masks, None, "raster", region):
            if lists:
                name = next((n for n, v in lists.items() if spec.image.stem in v), None)
                if name is None:
                    unlisted += 1
                    continue
                spec.split = _official_split(name)
                if spec.split is None:
                    dropped += 1
                    continue
            pairs.append(spec)
    if unlisted:
        log.info("%d image/label pairs are in none of the split lists; not used", unlisted)
    if dropped:
        log.info("%d pairs of an unknown split not used", dropped)
    return pairs


ISAID_MASK_SUFFIX = "_instance_color_RGB"


def _find_isaid(root: Path) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for d, _, files in os.walk(split_dir, followlinks=True):
            for f in sorted(files):
                p = Path(d) / f
                if p.suffix.lower() != ".png":
                    continue
                if p.stem.endswith(ISAID_MASK_SUFFIX):
                    masks.setdefault(p.stem[:-len(ISAID_MASK_SUFFIX)], p)
                elif "_instance_" not in p.stem:
                    images.setdefault(p.stem, p)
        if images:
            pairs += _split_pairs(images, masks, split_dir.name, "colors", split_dir,
                                  "without semantic masks")
    return pairs


LAYOUTS: dict[str, Layout] = {
    "loveda": Layout("loveda", "LoveDA", LOVEDA_CLASSES, 1, (0,), "raster", _find_loveda),
    "openearthmap": Layout("openearthmap", "OpenEarthMap", OPENEARTHMAP_CLASSES, 1, (0,),
                           "raster", _find_openearthmap, pixel_space_if_mixed_crs=True),
    "isaid": Layout("isaid", "iSAID", ISAID_CLASSES, 0, (), "colors", _find_isaid),
}

EXPECTED = {
    "loveda": "Train/ and Val/ folders with Urban/ and Rural/ scenes, each holding images_png/ "
              "and masks_png/",
    "openearthmap": "one folder per region holding images/ and labels/ GeoTIFFs (and train.txt, "
                    "val.txt at the top)",
    "isaid": "train/ and val/ folders holding P0000.png images and P0000_instance_color_RGB.png "
             "semantic masks (the unzipped images and Semantic_masks archives)",
}


def get_layout(name: str) -> Layout:
    """The layout called ``name``, with a clear error listing the known ones."""
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise SatSynthError(f"unknown dataset layout {name!r}: use one of "
                            f"{', '.join(LAYOUTS)}") from None


def find_layout_pairs(name: str, root: str | Path) -> tuple[list[PairSpec], Layout]:
    """The image/mask pairs of a published dataset, as downloaded, and its layout.

    Args:
        name (`str`):
            The layout: ``loveda``, ``openearthmap`` or ``isaid``.
        root (`str` or `Path`):
            The dataset's folder as unpacked.

    Returns:
        `tuple[list[PairSpec], Layout]`: the pairs, each with its official split
        (``PairSpec.split``), and the layout (class table, ignore values).

    Raises:
        `SatSynthError`: the layout is unknown, the folder is missing, or it holds no pair of the
        layout.
    """
    layout = get_layout(name)
    root = Path(root)
    if not root.is_dir():
        raise SatSynthError("dataset folder not found", root)
    pairs = layout.find(root)
    if not pairs:
        raise SatSynthError(f"no {layout.title} image/mask pairs found: expected "
                            f"{EXPECTED[layout.name]}", root)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.split or "unsplit"] = counts.get(p.split or "unsplit", 0) + 1
    log.info("%s layout: %s", layout.title, ", ".join(f"{n} {k} pairs" for k, n in counts.items()))
    return pairs, layout


def needs_pixel_space(layout: Layout, pairs: list[PairSpec]) -> bool:
    """Whether a layout's images span several CRSs.

    One dataset holds one CRS: such chips are then kept in pixel space, as the dataset's own loaders
    read them.

    Args:
        layout (`Layout`):
            The layout.
        pairs (`list[PairSpec]`):
            Its pairs (:func:`find_layout_pairs`).

    Returns:
        `bool`: `True` when the chips must be kept in pixel space.
    """
    if not layout.pixel_space_if_mixed_crs:
        return False
    from satsynth.raster import open_raster

    crss = set()
    for p in pairs:
        with open_raster(p.image, "image") as src:
            crss.add(src.crs.to_wkt() if src.crs else None)
        if len(crss) > 1:
            log.info("%s: the images are in different CRSs (tiles from many regions); chips are "
                     "kept in pixel space, without georeference", layout.title)
            return True
    return False
