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
    """An integer from JSON/YAML by the contract's rule: a whole number, never rounded or guessed.

    Args:
        value (`Any`):
            The value read (``1`` and ``1.0`` are taken; ``1.7``, ``"1"`` and `True` are not).
        what (`str`):
            What it is, for the message (e.g. ``class entry 0: id``).
        low (`int`, *optional*):
            The smallest value allowed.
        high (`int`, *optional*):
            The largest value allowed.

    Returns:
        `int`: the value.

    Raises:
        `SatSynthError`: the value is not a whole number or is out of range.
    """
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
        """The model index of the class called ``name`` (case-insensitive).

        Args:
            name (`str`):
                The class name.

        Returns:
            `int`: its index in the table's class order (the models' output channel).

        Raises:
            `KeyError`: no class has that name.
        """
        for i, c in enumerate(self.classes):
            if c.name.lower() == str(name).lower():
                return i
        raise KeyError(name)

    # --- conversions -----------------------------------------------------------------------
    def id_to_index_lut(self) -> np.ndarray:
        """A lookup from label value to model index.

        Returns:
            `np.ndarray`: ``(256,)`` uint8: ``lut[id]`` is the class's index, 255 (ignore) for
            values that are no class.
        """
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[c.id] = i
        return lut

    def index_to_id_lut(self) -> np.ndarray:
        """A lookup from model index to label value (what SatSynth writes in class rasters).

        Returns:
            `np.ndarray`: ``(256,)`` uint8: ``lut[index]`` is the class id; 255 stays 255, the
            output nodata.
        """
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
        """Build a table from any form the contract's schema reads.

        Args:
            data (`Any`):
                Our JSON form (``{"classes": [...], "ignore_ids": [...]}``), a bare list of names, a
                ``{name: colour}`` mapping or a palette file's content
                (:func:`satsynth.contract.parse_class_table`).
            where (`str`, *optional*, defaults to `"class table"`):
                Where it comes from, for the message.

        Returns:
            `ClassTable`: the table.

        Raises:
            `SatSynthError`: one line naming ``where`` and the problem (ids not whole numbers 0..254
            or repeated, names empty or repeated, bad colours).
        """
        with _user_errors():
            spec = parse_class_table(data, where)
        return cls(spec.classes, spec.ignore_ids, spec.ignore_colors)

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """Read a class table from a JSON or YAML file (``.yaml``/``.yml``: YAML).

        Args:
            path (`str` or `Path`):
                The file (UTF-8).

        Returns:
            `ClassTable`: the table, checked as :meth:`from_dict` checks it.

        Raises:
            `SatSynthError`: the file is missing, not UTF-8, cannot be parsed, or holds a bad table.
        """
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
        """Infer a table from the label values present (default names and colours).

        Args:
            values (`Iterable[int]`):
                The class ids found in the labels.
            names (`dict[int, str]`, *optional*):
                Names for some of the ids.

        Returns:
            `ClassTable`: one class per value, in increasing order.
        """
        return cls(classes_from_values(values, names))

    @classmethod
    def from_names(cls, names: Iterable[str], background: str | None = "background") -> ClassTable:
        """Infer a table from class names (e.g. a vector field's values).

        Args:
            names (`Iterable[str]`):
                The class names; they get ids in alphabetical order.
            background (`str`, *optional*, defaults to `"background"`):
                The class of uncovered pixels, id 0; `None` for none.

        Returns:
            `ClassTable`: the table.
        """
        return cls(classes_from_names(names, background))


#: The attribute of the class polygons SatSynth writes that holds the class id (the value in the
#: user's data), the one their style is categorized on.
CLASS_ID_FIELD = "class_id"


def write_qml(path: str | Path, table: ClassTable, band: int = 1) -> Path:
    """Write the class table as a QGIS style (.qml) with class names and colours.

    The one file styles a class raster (a paletted renderer on ``band``) and class polygons (a
    renderer categorized on :data:`CLASS_ID_FIELD`): QGIS reads the part that fits the layer it
    styles, so the style beside a prediction serves its raster and its polygons alike.

    Args:
        path (`str` or `Path`):
            The ``.qml`` file, written atomically (QGIS loads ``NAME.qml`` beside ``NAME.tif`` or
            ``NAME.gpkg`` with the layer).
        table (`ClassTable`):
            The classes: one palette entry and one category per class id, with its name and colour.
        band (`int`, *optional*, defaults to 1):
            The band the raster renderer colours.

    Returns:
        `Path`: ``path``.
    """
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
