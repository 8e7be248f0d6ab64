"""The class table editor: id, name and colour per class, filled from the label layer.

The JSON it imports and exports is the engine's class-table format
(``{"classes": [{"id": 1, "name": "water", "color": "#1f78b4"}, ...]}``), so the file can be given
to ``satsynth prepare --classes`` or the Prepare algorithm as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..contract import contract

#: Label rasters larger than this many pixels are sampled (nearest neighbour) to find values.
MAX_SAMPLE_PIXELS = 4096 * 4096

#: A class table the engine would reject, or classes that cannot be read from a layer (the
#: message says why): the engine's contract error, with the engine's messages.
ClassTableError = contract.ContractError


@dataclass(frozen=True)
class ClassRow:
    """One class: its value in the label data, its name, its colour '#rrggbb'."""

    id: int
    name: str
    color: str


def default_color(i: int) -> str:
    """The engine's default colour for class number ``i``, as '#rrggbb'."""
    return contract.hex_color(contract.default_color(i))


def _rows(classes: Iterable[Any]) -> list[ClassRow]:
    return [ClassRow(c.id, c.name, c.hex()) for c in classes]


def rows_from_values(values: Any, names: dict[int, str] | None = None,
                     colors: dict[int, str] | None = None) -> list[ClassRow]:
    """Rows for numeric label values (the engine's ``ClassTable.from_values`` convention)."""
    rgb = {v: contract.parse_color(c) for v, c in (colors or {}).items()}
    return _rows(contract.classes_from_values(values, names, rgb))


def rows_from_names(names: Any, background: str | None = "background") -> list[ClassRow]:
    """Rows for text class names: background gets id 0, the names 1..N in sorted order (the
    engine's ``ClassTable.from_names`` convention)."""
    return _rows(contract.classes_from_names(names, background))


def rows_to_dict(rows: list[ClassRow]) -> dict[str, Any]:
    """The engine's JSON form (unvalidated)."""
    return {"classes": [{"id": r.id, "name": r.name, "color": r.color} for r in rows]}


def rows_from_dict(data: Any, where: str = "class table") -> list[ClassRow]:
    """Read any class table the engine reads (our JSON form, a bare list, a palette file),
    validated by the engine's own schema (raises :class:`ClassTableError`)."""
    return _rows(contract.parse_class_table(data, where).classes)


def validate_rows(rows: list[ClassRow], where: str = "class table") -> None:
    """Raise :class:`ClassTableError` for what the engine would refuse (its own schema)."""
    contract.parse_class_table(rows_to_dict(rows), where)


# --- reading classes from layers ------------------------------------------------------------
def raster_values(layer: QgsRasterLayer, band: int = 1) -> list[int]:
    """Distinct integer values of a label raster's band (nodata excluded; large rasters are
    read at a reduced resolution)."""
    import numpy as np

    provider = layer.dataProvider()
    extent = provider.extent()
    w, h = provider.xSize(), provider.ySize()
    scale = max(1.0, ((w * h) / MAX_SAMPLE_PIXELS) ** 0.5)
    bw, bh = max(1, int(w / scale)), max(1, int(h / scale))
    block = provider.block(band, extent, bw, bh)
    dtype = _numpy_dtype(block.dataType())
    data = np.frombuffer(bytes(block.data()), dtype=dtype)[: bw * bh]
    if block.hasNoDataValue():
        data = data[data != dtype.type(block.noDataValue())]
    values = np.unique(data)
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise ClassTableError(f"{layer.name()}: the label raster holds non-integer values "
                              "(pick the class raster, not an image)")
    if values.size > contract.MAX_CLASSES + 1:
        raise ClassTableError(f"{layer.name()}: {values.size} distinct values: this does not "
                              "look like a class raster")
    return [int(v) for v in values]


def _numpy_dtype(qgis_type: Any) -> Any:
    import numpy as np
    from qgis.core import Qgis

    table = {Qgis.Byte: np.uint8, Qgis.UInt16: np.uint16, Qgis.Int16: np.int16,
             Qgis.UInt32: np.uint32, Qgis.Int32: np.int32, Qgis.Float32: np.float32,
             Qgis.Float64: np.float64}
    if qgis_type not in table:
        raise ClassTableError(f"label raster data type {qgis_type} is not supported")
    return np.dtype(table[qgis_type])


def rows_from_raster(layer: QgsRasterLayer) -> list[ClassRow]:
    """Rows from a label raster: its distinct values, named and coloured by its paletted style
    when it has one."""
    values = raster_values(layer)
    names: dict[int, str] = {}
    colors: dict[int, str] = {}
    renderer = layer.renderer()
    if isinstance(renderer, QgsPalettedRasterRenderer):
        for cls in renderer.classes():
            names[int(cls.value)] = cls.label or f"class {int(cls.value)}"
            colors[int(cls.value)] = cls.color.name()
    return rows_from_values(values, names, colors)


def rows_from_field(layer: QgsVectorLayer, field: str) -> list[ClassRow]:
    """Rows from a vector layer's class field: numeric values become ids, text values names."""
    idx = layer.fields().lookupField(field)
    if idx < 0:
        raise ClassTableError(f"{layer.name()}: no field named {field!r}")
    values = [v for v in layer.uniqueValues(idx) if v is not None and str(v) != "NULL"]
    if not values:
        raise ClassTableError(f"{layer.name()}: field {field!r} has no values")
    if layer.fields().at(idx).isNumeric():
        try:
            nums = [float(v) for v in values]
        except (TypeError, ValueError):
            nums = []
        if nums and all(n.is_integer() for n in nums):
            # polygons leave gaps: like the engine, uncovered pixels are class 0 "background"
            ids = {int(n) for n in nums} | {0}
            return rows_from_values(ids, names={0: "background"}, colors={0: "#000000"})
        raise ClassTableError(f"{layer.name()}: field {field!r} holds non-integer numbers; "
                              "pick a class code or class name field")
    return rows_from_names(str(v) for v in values)


# --- the widget -----------------------------------------------------------------------------
class ClassTableWidget(QWidget):
    """Editable table of classes (id, name, colour) with fill, import and export buttons."""

    changed = pyqtSignal()
    fillRequested = pyqtSignal()
    COLUMNS = ("Id", "Name", "Colour")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 3, self)
        self.table.setObjectName("classTable")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setMinimumHeight(110)
        self.table.cellDoubleClicked.connect(self._cell_double_clicked)
        self.table.itemChanged.connect(lambda _item: self.changed.emit())

        self.fill_button = QPushButton("From labels", self)
        self.fill_button.setToolTip("Fill the table from the label raster's values or the "
                                    "class field's distinct values")
        self.fill_button.clicked.connect(self.fillRequested.emit)
        self.add_button = QPushButton("Add", self)
        self.add_button.clicked.connect(self.add_row)
        self.remove_button = QPushButton("Remove", self)
        self.remove_button.clicked.connect(self.remove_selected)
        self.import_button = QPushButton("Import…", self)
        self.import_button.clicked.connect(self._import_dialog)
        self.export_button = QPushButton("Export…", self)
        self.export_button.clicked.connect(self._export_dialog)

        buttons = QHBoxLayout()
        for b in (self.fill_button, self.add_button, self.remove_button, self.import_button,
                  self.export_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

    # rows in and out
    def set_rows(self, rows: list[ClassRow]) -> None:
        """Replace the table's content."""
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        for r in rows:
            self._append(r)
        self.table.blockSignals(False)
        self.changed.emit()

    def _append(self, r: ClassRow) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        id_item = QTableWidgetItem()
        id_item.setData(Qt.EditRole, int(r.id))
        self.table.setItem(row, 0, id_item)
        self.table.setItem(row, 1, QTableWidgetItem(r.name))
        color_item = QTableWidgetItem(r.color)
        color_item.setFlags(color_item.flags() & ~Qt.ItemIsEditable)
        color_item.setBackground(QColor(r.color))
        color_item.setForeground(QColor("#ffffff") if QColor(r.color).lightness() < 128
                                 else QColor("#000000"))
        self.table.setItem(row, 2, color_item)

    def rows(self) -> list[ClassRow]:
        """The table's content (unvalidated)."""
        out = []
        for row in range(self.table.rowCount()):
            id_item, name_item, color_item = (self.table.item(row, c) for c in range(3))
            try:
                cid = int(id_item.data(Qt.EditRole)) if id_item else -1
            except (TypeError, ValueError):
                cid = -1
            out.append(ClassRow(cid, name_item.text() if name_item else "",
                                color_item.text() if color_item else default_color(row)))
        return out

    def valid_rows(self) -> list[ClassRow]:
        """The content, checked (raises :class:`ClassTableError`)."""
        rows = self.rows()
        validate_rows(rows)
        return rows

    def is_valid(self) -> bool:
        try:
            self.valid_rows()
        except ClassTableError:
            return False
        return True

    def add_row(self) -> None:
        ids = [r.id for r in self.rows()]
        nxt = max(ids) + 1 if ids else 0
        self._append(ClassRow(nxt, f"class {nxt}", default_color(len(ids))))
        self.changed.emit()

    def remove_selected(self) -> None:
        for row in sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)
        self.changed.emit()

    def set_color(self, row: int, color: str) -> None:
        item = self.table.item(row, 2)
        item.setText(QColor(color).name())
        item.setBackground(QColor(color))
        self.changed.emit()

    def _cell_double_clicked(self, row: int, column: int) -> None:
        if column != 2:
            return
        color = QColorDialog.getColor(QColor(self.table.item(row, 2).text()), self, "Class colour")
        if color.isValid():
            self.set_color(row, color.name())

    # files
    def export_json(self, path: str | Path) -> Path:
        """Write the table as the engine's class-table JSON."""
        rows = self.valid_rows()
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(rows_to_dict(rows), indent=2), encoding="utf-8")
        tmp.replace(path)
        return path

    def import_json(self, path: str | Path) -> None:
        """Load a class-table JSON file into the table."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClassTableError(f"{path}: cannot read the class table ({exc})") from None
        self.set_rows(rows_from_dict(data, str(path)))

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import class table", "",
                                              "Class table (*.json)")
        self._with_file(path, self.import_json)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export class table", "classes.json",
                                              "Class table (*.json)")
        self._with_file(path, self.export_json)

    def _with_file(self, path: str, action: Callable[[str], object]) -> None:
        """``action(path)`` when a file was chosen; what goes wrong is shown as a warning."""
        if not path:
            return
        try:
            action(path)
        except (ClassTableError, OSError) as exc:
            from qgis.PyQt.QtWidgets import QMessageBox

            QMessageBox.warning(self, "SatSynth class table", str(exc))
