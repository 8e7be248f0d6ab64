"""Class tables: which label value means which class, its name and its colour.

Inside the engine, classes are *indices* 0..K-1 (what models see) and 255 is the ignore index.
Each class also keeps the *id* (value) it has in the user's data, which is what every raster we
write for the user contains.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.contract import (
    IGNORE_INDEX,
    OUTPUT_MARK,
    ClassInfo,
    ClassTableSpec,
    ContractError,
    check_classes,
    class_table_dict,
    classes_from_names,
    classes_from_values,
    default_color,
    parse_class_table,
)
from satsynth.contract import strict_int as _strict_int
from satsynth.errors import SatSynthError

__all__ = ["CLASS_ID_FIELD", "IGNORE_INDEX", "ClassInfo", "ClassTable", "default_color",
           "strict_int", "write_qml"]


@contextmanager
def _user_errors() -> Iterator[None]:
    """The contract's class-table errors as :class:`SatSynthError` (same message and path)."""
    try:
        yield
    except ContractError as exc:
        raise SatSynthError(exc.reason, exc.where) from None


def strict_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer from JSON/YAML (the contract's rule: a whole number, never rounded or
    guessed), else a :class:`SatSynthError`."""
    with _user_errors():
        return _strict_int(value, what, low, high)


@dataclass
class ClassTable:
    """An ordered list of classes; position in the list is the model's class index."""

    classes: list[ClassInfo]
    ignore_ids: list[int] = field(default_factory=list)
    ignore_colors: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        with _user_errors():
            check_classes(self.classes)

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
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.id
        return lut

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio colour map keyed by label value (ids), nodata 255 transparent."""
        cmap = {c.id: (*c.color, 255) for c in self.classes}
        cmap[IGNORE_INDEX] = (0, 0, 0, 0)
        return cmap

    def palette_by_index(self) -> np.ndarray:
        """(256, 3) uint8 RGB colours by model index (ignore is black)."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        for i, c in enumerate(self.classes):
            pal[i] = c.color
        return pal

    # --- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return class_table_dict(ClassTableSpec(self.classes, self.ignore_ids, self.ignore_colors))

    @classmethod
    def from_dict(cls, data: Any, where: str = "class table") -> ClassTable:
        """Build from any form the contract's schema reads (:func:`satsynth.contract.
        parse_class_table`: our JSON form, a bare list, a {name: colour} mapping, a palette
        file); problems raise one :class:`SatSynthError` line naming ``where``."""
        with _user_errors():
            spec = parse_class_table(data, where)
        return cls(spec.classes, spec.ignore_ids, spec.ignore_colors)

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """Read a class table from JSON or YAML."""
        path = Path(path)
        if not path.is_file():
            raise SatSynthError("class table not found", path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SatSynthError(f"the class table is not UTF-8 text (byte {exc.start}): save it "
                                "as UTF-8", path) from None
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
        return cls(classes_from_values(values, names))

    @classmethod
    def from_names(cls, names: Iterable[str], background: str | None = "background") -> ClassTable:
        """Infer a table from class names (e.g. a vector field); ``background`` gets id 0."""
        return cls(classes_from_names(names, background))


#: The attribute of the class polygons SatSynth writes that holds the class id (the value in the
#: user's data), the one their style is categorized on.
CLASS_ID_FIELD = "class_id"


def write_qml(path: str | Path, table: ClassTable, band: int = 1) -> Path:
    """Write the class table as a QGIS style (.qml) with class names and colours, for a class
    raster (a paletted renderer on ``band``) and for class polygons (a renderer categorized on
    :data:`CLASS_ID_FIELD`): QGIS reads the part that fits the layer it styles, so the one file
    beside a prediction styles its raster and its polygons alike."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{c.hex()}" alpha="255" '
        f"label={quoteattr(c.name)}/>"
        for c in table.classes
    )
    qml = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- {OUTPUT_MARK}: written by SatSynth -->
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
{_polygon_renderer(table)}
  <blendMode>0</blendMode>
</qgis>
"""
    from satsynth.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(qml, encoding="utf-8")
    return path


def _polygon_renderer(table: ClassTable) -> str:
    """QGIS's categorized renderer for class polygons: one category per class (its id, name and
    colour), filled without outline."""
    from xml.sax.saxutils import quoteattr

    categories, symbols = [], []
    for i, c in enumerate(table.classes):
        categories.append(f'      <category value="{c.id}" symbol="{i}" '
                          f'label={quoteattr(c.name)} render="true"/>')
        rgba = ",".join(str(v) for v in (*c.color, 255))
        props = {"color": rgba, "style": "solid", "outline_style": "no"}
        options = "".join(f'<Option name="{k}" type="QString" value="{v}"/>'
                          for k, v in props.items())
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        symbols.append(
            f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" locked="0" pass="0">'
            f'<Option type="Map">{options}</Option>{legacy}</layer></symbol>')
    return (f'  <renderer-v2 type="categorizedSymbol" attr="{CLASS_ID_FIELD}" forceraster="0" '
            'symbollevels="0" enableorderby="0">\n'
            '    <categories>\n' + "\n".join(categories) + '\n    </categories>\n'
            '    <symbols>\n' + "\n".join(symbols) + '\n    </symbols>\n'
            '  </renderer-v2>')
