"""``satsynth info``: what a prepared dataset holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from satsynth.data.store import SPLITS, ChipStore


def _crs_text(crs: str | None) -> str:
    if crs is None:
        return "not georeferenced"
    from rasterio.crs import CRS

    from satsynth.raster import crs_name

    try:
        return crs_name(CRS.from_user_input(crs))
    except Exception:  # noqa: BLE001 - show what is stored
        return crs[:80]


def dataset_info(path: str | Path) -> dict[str, Any]:
    """What ``satsynth info`` says about a chip store.

    Args:
        path (`str` or `Path`):
            A dataset or synthetic folder.

    Returns:
        `dict[str, Any]`: ``dataset``, ``chips`` (per split), ``size_mb``, ``bands``, ``dtype``,
        ``chip_size``, ``georeferenced``, ``crs``, ``pixel_size``, ``synthetic``, ``sources``,
        ``normalization`` and ``classes`` (each with its pixel share per split).

    Raises:
        `SatSynthError`: ``path`` is not a chip store.
    """
    store = ChipStore(path)
    m = store.meta
    counts = {s: store.count(s) for s in SPLITS if store.has_split(s)}
    size = sum(f.stat().st_size for f in store.path.iterdir() if f.is_file())
    shares = {s: m.class_shares(s) for s in counts}
    classes = []
    for i, c in enumerate(m.classes.classes):
        entry: dict[str, Any] = {"index": i, "id": c.id, "name": c.name, "color": c.hex()}
        for s in counts:
            entry[f"{s}_share"] = round(float(shares[s][i]), 4)
            entry[f"{s}_pixels"] = int(m.class_pixels.get(s, [0] * len(m.classes))[i])
        classes.append(entry)
    return {
        "dataset": str(store.path),
        "chips": counts,
        "size_mb": round(size / 2**20, 2),
        "bands": m.bands,
        "dtype": m.dtype,
        "chip_size": m.chip_size,
        "georeferenced": m.georeferenced,
        "crs": _crs_text(m.crs),
        "pixel_size": list(m.pixel_size) if m.pixel_size else None,
        "synthetic": m.synthetic,
        "sources": len(m.sources),
        "normalization": {"low": m.normalizer.low, "high": m.normalizer.high},
        "classes": classes,
    }


def format_info(info: dict[str, Any]) -> str:
    """The info of :func:`dataset_info` as readable lines (what ``satsynth info`` prints).

    Args:
        info (`dict[str, Any]`):
            What :func:`dataset_info` returned.

    Returns:
        `str`: the lines, joined by newlines.
    """
    chips = ", ".join(f"{n} {s}" for s, n in info["chips"].items())
    px = info["pixel_size"]
    lines = [
        f"dataset:     {info['dataset']}" + ("  (synthetic)" if info["synthetic"] else ""),
        f"chips:       {chips}  ({info['chip_size']} x {info['chip_size']} px, "
        f"{info['size_mb']} MB)",
        f"bands:       {info['bands']} x {info['dtype']}",
        f"CRS:         {info['crs']}",
        f"pixel size:  {f'{px[0]:.6g} x {px[1]:.6g}' if px else 'n/a (pixel space)'}",
        f"sources:     {info['sources']}",
        "normalize:   " + ", ".join(f"band {b + 1} {lo:.6g}..{hi:.6g}" for b, (lo, hi) in enumerate(
            zip(info["normalization"]["low"], info["normalization"]["high"], strict=True))),
        "classes:     id  name" + " " * 22 + "".join(f"{s:>8}" for s in info["chips"]),
    ]
    for c in info["classes"]:
        shares = "".join(f"{100 * c[f'{s}_share']:7.1f}%" for s in info["chips"])
        lines.append(f"             {c['id']:>3} {c['name'][:24]:<24} {c['color']}{shares}")
    return "\n".join(lines)
