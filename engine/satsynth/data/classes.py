"""Class tables: which label value means which class, its name and its colour.

Inside the engine, classes are *indices* 0..K-1 (what models see) and 255 is the ignore index.
Each class also keeps the *id* (value) it has in the user's data, which is what every raster we
write for the user contains.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError

IGNORE_INDEX = 255
MAX_CLASSES = 254


def parse_color(value: Any, where: str = "class table") -> tuple[int, int, int]:
    """Parse '#RRGGBB', 'RRGGBB' or [r, g, b] into an RGB tuple."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif isinstance(value, Sequence) and len(value) >= 3:
        try:
            rgb = tuple(strict_int(v, "colour") for v in value[:3])
        except SatSynthError:
            rgb = (-1, -1, -1)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise SatSynthError(f"bad colour {value!r} in {where}: use '#RRGGBB' or [r, g, b]")


def strict_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer from JSON/YAML (an int, a whole float like 3.0, or digits), else a clear error:
    ``1.7``, ``"one"`` and ``true`` are refused, never rounded or guessed."""
    if isinstance(value, bool):
        v = None
    elif isinstance(value, int):
        v = value
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        v = int(value)
    else:
        v = None
    if v is None:
        raise SatSynthError(f"{what} must be a whole number, got {value!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise SatSynthError(f"{what} must be in {low}..{high}, got {v}")
    return v


def default_color(i: int) -> tuple[int, int, int]:
    """A distinct colour for class number ``i`` (golden-ratio hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


@dataclass(frozen=True)
class ClassInfo:
    """One class: its value in the user's data, its name and its display colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    def hex(self) -> str:
        """Colour as '#rrggbb'."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)


@dataclass
class ClassTable:
    """An ordered list of classes; position in the list is the model's class index."""

    classes: list[ClassInfo]
    ignore_ids: list[int] = field(default_factory=list)
    ignore_colors: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.classes:
            raise SatSynthError("the class table has no classes")
        if len(self.classes) > MAX_CLASSES:
            raise SatSynthError(f"at most {MAX_CLASSES} classes are supported, got {len(self.classes)}")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise SatSynthError(f"class ids must be unique, got {ids}")
        for c in self.classes:
            if not 0 <= c.id <= 254:
                raise SatSynthError(f"class id {c.id} ({c.name}) is outside 0..254")

    # --- basic views -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        """K, the number of classes the models predict."""
        return len(self.classes)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index_of_name(self, name: str) -> int:
        """Model index of the class called ``name`` (case-insensitive)."""
        for i, c in enumerate(self.classes):
            if c.name.lower() == str(name).lower():
                return i
        raise KeyError(name)

    # --- conversions -----------------------------------------------------------------------
    def id_to_index_lut(self) -> np.ndarray:
        """256-entry lookup: label value -> model index (255 for ignore/unknown)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[c.id] = i
        return lut

    def index_to_id_lut(self) -> np.ndarray:
        """256-entry lookup: model index -> label value (255 stays 255, the output nodata)."""
        lut = np.full(256, 255, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.id
        return lut

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio colour map keyed by label value (ids), nodata 255 transparent."""
        cmap = {c.id: (*c.color, 255) for c in self.classes}
        cmap[255] = (0, 0, 0, 0)
        return cmap

    def palette_by_index(self) -> np.ndarray:
        """(256, 3) uint8 RGB colours by model index (ignore is black)."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        for i, c in enumerate(self.classes):
            pal[i] = c.color
        return pal

    # --- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"id": c.id, "name": c.name, "color": c.hex()} for c in self.classes],
            "ignore_ids": list(self.ignore_ids),
            "ignore_colors": ["#{:02x}{:02x}{:02x}".format(*c) for c in self.ignore_colors],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "class table") -> ClassTable:
        """Build from our JSON form, a bare list, a {name: colour} mapping, or a palette file
        like the Dubai dataset's (``{"ignore_color": ..., "classes": [...]}``), checked against
        one schema wherever a table comes from (class files, dataset.json, model configs): ids
        whole numbers in 0..254 and unique, names non-empty text and unique (ignoring case),
        colours '#RRGGBB' or [r, g, b]. Problems raise one :class:`SatSynthError` line."""
        try:
            return cls._from_dict(data, where)
        except SatSynthError as exc:
            raise SatSynthError(str(exc), where) from None

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> ClassTable:
        ignore_ids: list[int] = []
        ignore_colors: list[tuple[int, int, int]] = []
        if isinstance(data, dict) and "classes" in data:
            items = data["classes"]
            raw_ids = data.get("ignore_ids", []) or []
            if not isinstance(raw_ids, list):
                raise SatSynthError(f"ignore_ids must be a list of label values, got {raw_ids!r}")
            ignore_ids = [strict_int(v, "an ignore id", 0, 255) for v in raw_ids]
            if "ignore_id" in data and data["ignore_id"] is not None:
                ignore_ids.append(strict_int(data["ignore_id"], "ignore_id", 0, 255))
            raw_colors = data.get("ignore_colors", []) or []
            if not isinstance(raw_colors, list):
                raise SatSynthError(f"ignore_colors must be a list of colours, got {raw_colors!r}")
            raw_colors = list(raw_colors)
            if data.get("ignore_color"):
                raw_colors.append(data["ignore_color"])
            ignore_colors = [parse_color(c, "ignore_colors") for c in raw_colors]
        elif isinstance(data, dict):
            items = [{"name": k, "color": v} for k, v in data.items()]
        else:
            items = data
        if not isinstance(items, list) or not items:
            raise SatSynthError(f"expected a non-empty list of classes, got {str(items)[:60]!r}")
        classes = []
        seen: dict[str, int] = {}
        for n, item in enumerate(items):
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict):
                raise SatSynthError(f"class entry {n} is not an object: {str(item)[:60]!r}")
            cid = strict_int(item.get("id", item.get("value", n)), f"class entry {n}: id", 0, 254)
            name = item.get("name", f"class {cid}")
            if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
                raise SatSynthError(f"class entry {n}: name must be non-empty text, got {name!r}")
            name = str(name).strip()
            if name.lower() in seen:
                raise SatSynthError(f"class name {name!r} is used twice (entries {seen[name.lower()]}"
                                    f" and {n}): names must be unique")
            seen[name.lower()] = n
            color = (parse_color(item["color"], f"class entry {n}") if item.get("color")
                     else default_color(n))
            classes.append(ClassInfo(cid, name, color))
        return cls(classes, ignore_ids, ignore_colors)

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """Read a class table from JSON or YAML."""
        path = Path(path)
        if not path.is_file():
            raise SatSynthError("class table not found", path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                import json

                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parser error is the file's fault
            raise SatSynthError(f"cannot parse class table ({exc})", path) from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_values(cls, values: Iterable[int], names: dict[int, str] | None = None) -> ClassTable:
        """Infer a table from the label values present (default names and colours)."""
        vals = sorted({int(v) for v in values})
        names = names or {}
        return cls([ClassInfo(v, names.get(v, f"class {v}"), default_color(i))
                    for i, v in enumerate(vals)])

    @classmethod
    def from_names(cls, names: Iterable[str], background: str | None = "background") -> ClassTable:
        """Infer a table from class names (e.g. a vector field); ``background`` gets id 0."""
        ordered = sorted({str(n) for n in names})
        classes = []
        if background is not None:
            classes.append(ClassInfo(0, background, (0, 0, 0)))
        for n in ordered:
            if background is not None and n == background:
                continue
            i = len(classes)
            classes.append(ClassInfo(i, n, default_color(i)))
        return cls(classes)


def write_qml(path: str | Path, table: ClassTable, band: int = 1) -> Path:
    """Write a QGIS paletted-renderer style (.qml) that shows class names and colours."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{c.hex()}" alpha="255" '
        f"label={quoteattr(c.name)}/>"
        for c in table.classes
    )
    qml = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="{band}" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
    from satsynth.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(qml, encoding="utf-8")
    return path
