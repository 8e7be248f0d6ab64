"""Class styles for the layers the engine writes (paletted renderer with class names/colours)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)

#: Outline colours of chip footprints by split.
SPLIT_COLORS = {"train": "#1f78b4", "val": "#ff7f00"}


def sidecar_qml(path: str | Path) -> Path:
    """The ``.qml`` next to a raster (``pred.tif`` -> ``pred.qml``)."""
    return Path(path).with_suffix(".qml")


def apply_class_style(layer: QgsMapLayer, qml: str | Path | None = None) -> bool:
    """Style a class raster: from ``qml`` (the engine's style with class names), else from the
    raster's own colour table. Returns True when a paletted style was applied."""
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        return False
    if qml is not None and Path(qml).is_file():
        _msg, ok = layer.loadNamedStyle(str(qml))
        if ok and isinstance(layer.renderer(), QgsPalettedRasterRenderer):
            layer.triggerRepaint()
            return True
    provider = layer.dataProvider()
    table = provider.colorTable(1) if provider is not None else []
    if not table:
        return False
    classes = QgsPalettedRasterRenderer.colorTableToClassData(table)
    classes = [c for c in classes if c.color.alpha() > 0]  # the transparent nodata entry
    if not classes:
        return False
    layer.setRenderer(QgsPalettedRasterRenderer(provider, 1, classes))
    layer.triggerRepaint()
    return True


def apply_split_style(layer: QgsMapLayer) -> bool:
    """Outline chip footprints by split (train blue, val orange), no fill."""
    if not isinstance(layer, QgsVectorLayer) or layer.fields().indexOf("split") < 0:
        return False
    categories = []
    for split, color in SPLIT_COLORS.items():
        symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": color,
                                             "outline_width": "0.5"})
        categories.append(QgsRendererCategory(split, symbol, split))
    layer.setRenderer(QgsCategorizedSymbolRenderer("split", categories))
    layer.triggerRepaint()
    return True


class ClassStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies the class style once Processing has loaded a class raster into the project."""

    # Processing keeps only a C++ pointer: the Python objects must outlive the algorithm run.
    _alive: deque = deque(maxlen=256)

    def __init__(self, qml: str | Path | None) -> None:
        super().__init__()
        self.qml = str(qml) if qml else None

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        if not apply_class_style(layer, self.qml) and feedback is not None:
            feedback.pushInfo(f"No class style found for {layer.name()}")

    @classmethod
    def create(cls, qml: str | Path | None) -> ClassStylePostProcessor:
        """A post-processor kept alive for the rest of the session."""
        pp = cls(qml)
        cls._alive.append(pp)
        return pp


class ChipSplitPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles the chip-footprint layer by split once Processing has loaded it."""

    _alive: deque = deque(maxlen=256)

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        apply_split_style(layer)

    @classmethod
    def create(cls) -> ChipSplitPostProcessor:
        """A post-processor kept alive for the rest of the session."""
        pp = cls()
        cls._alive.append(pp)
        return pp


def apply_vector_class_style(layer: QgsMapLayer, classes: list[dict]) -> bool:
    """Fill class polygons with their class colour (categorized on ``class_id``)."""
    if not isinstance(layer, QgsVectorLayer) or layer.fields().indexOf("class_id") < 0:
        return False
    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({"color": str(c.get("color", "#888888")),
                                             "outline_style": "no"})
        categories.append(QgsRendererCategory(int(c["id"]), symbol, str(c.get("name", c["id"]))))
    if not categories:
        return False
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
    layer.triggerRepaint()
    return True


class VectorClassStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles class polygons by class once Processing has loaded them."""

    _alive: deque = deque(maxlen=256)

    def __init__(self, classes: list[dict]) -> None:
        super().__init__()
        self.classes = list(classes)

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        apply_vector_class_style(layer, self.classes)

    @classmethod
    def create(cls, classes: list[dict]) -> VectorClassStylePostProcessor:
        """A post-processor kept alive for the rest of the session."""
        pp = cls(classes)
        cls._alive.append(pp)
        return pp
