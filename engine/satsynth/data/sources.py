"""Input pairs: which image goes with which labels, given on the command line or found in a folder.

A *pair* is one image raster plus its labels, which are one of:

- ``raster``: a single-band raster of class ids (``--labels``);
- ``colors``: a colour-coded mask, RGB or paletted (``--folder``, or a 3-band ``--labels``);
- ``vector``: a vector layer with a class field, rasterized onto the image grid (``--vector``).

Rasters are opened and read through :mod:`satsynth.raster`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

#: File name endings taken as images / masks when scanning a folder.
IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".vrt", ".img", ".bmp",
                  ".gpkg", ".webp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp", ".webp")
#: Folder names recognised as holding the masks next to an ``images`` folder.
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "annotations", "gt")

LABEL_KINDS = ("raster", "colors", "vector")


def refuse_repeats(paths: list[Path], option: str) -> None:
    """Refuse an input given twice to a command that merges its inputs.

    By identity, so ``a``, ``./a``, a symbolic link to it or the same folder through a bind mount
    count as one. Merging one input twice would duplicate every chip or pair.

    Args:
        paths (`list[Path]`):
            The inputs given (``--image``, synthetic folders, ...).
        option (`str`):
            The option they were given to, for the message.

    Raises:
        `SatSynthError`: an input is given twice (naming it).
    """
    seen: dict[object, Path] = {}
    for p in paths:
        try:
            st = os.stat(p)
            key: object = (st.st_dev, st.st_ino)
        except OSError:  # missing: the command says so itself
            key = os.path.realpath(p)
        if key in seen:
            same = "" if str(seen[key]) == str(p) else f" (the same as {seen[key]})"
            raise SatSynthError(f"given twice to {option}{same}: each input counts once, so "
                                "give it once", p)
        seen[key] = p


@dataclass
class PairSpec:
    """One image and its labels, before anything is read."""

    image: Path
    labels: Path
    kind: str  # one of LABEL_KINDS; "auto" for folder masks (decided when opened)
    layer: str | None = None
    split: str | None = None  # a published dataset's own split ("train"/"val"), see layouts

    def describe(self) -> str:
        return f"{self.image.name} + {self.labels.name}"


def find_folder_pairs(folder: str | Path) -> list[PairSpec]:
    """Pairs of ``images/<stem>.*`` and ``masks/<stem>.*`` found anywhere below ``folder``.

    Images without a mask (and masks without an image) are reported in the log and skipped. The
    masks folder may also be named ``mask``, ``labels``, ``label``, ``annotations`` or ``gt``.

    Args:
        folder (`str` or `Path`):
            The folder to search recursively.

    Returns:
        `list[PairSpec]`: the pairs, their label kind decided when opened (``auto``).

    Raises:
        `SatSynthError`: the folder is missing or holds no pair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SatSynthError("folder not found", folder)
    image_dirs = sorted({Path(d) / n for d, subdirs, _ in os.walk(folder, followlinks=True)
                         for n in subdirs if n.lower() == "images"})
    if folder.name.lower() == "images":
        image_dirs.insert(0, folder)
    pairs: list[PairSpec] = []
    searched = []
    for idir in image_dirs:
        mdirs = [d for d in idir.parent.iterdir()
                 if d.is_dir() and d.name.lower() in MASK_DIR_NAMES]
        if not mdirs:
            continue
        searched.append(idir.parent)
        masks: dict[str, Path] = {}
        for mdir in mdirs:
            for m in sorted(mdir.iterdir()):
                if m.is_file() and m.suffix.lower() in MASK_SUFFIXES:
                    masks.setdefault(m.stem, m)
        used = set()
        for img in sorted(idir.iterdir()):
            if not (img.is_file() and img.suffix.lower() in IMAGE_SUFFIXES):
                continue
            m = masks.get(img.stem)
            if m is None:
                log.warning("%s: no mask with the same name in %s; skipped", img,
                            ", ".join(d.name for d in mdirs))
                continue
            used.add(img.stem)
            pairs.append(PairSpec(img, m, "auto"))
        for stem in sorted(set(masks) - used):
            log.warning("%s: mask without an image of the same name; skipped", masks[stem])
    if not pairs:
        raise SatSynthError(
            "no image/mask pairs found: expected an 'images' folder with a sibling 'masks' folder "
            "holding files of the same names (searched " + (
                ", ".join(str(s) for s in searched) if searched else "all sub-folders") + ")",
            folder)
    log.info("%s: found %d image/mask pairs in %d folder(s)", folder, len(pairs),
             len({p.image.parent for p in pairs}))
    return pairs
