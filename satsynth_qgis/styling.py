"""Styles for the layers the engine writes: each class output (a class raster, class polygons,
a label mosaic) has the style the engine wrote beside it (``contract.style_path``: class names
and colours, a paletted renderer for rasters, categorized by class for polygons), which the
plugin only loads; chip footprints are outlined by split."""

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

from .contract import contract

#: Outline colours of chip footprints by split.
SPLIT_COLORS = {"train": "#1f78b4", "val": "#ff7f00"}


def sidecar_qml(path: str | Path) -> Path:
    """The style the engine writes beside the class output ``path`` (``pred.tif`` ->
    ``pred.qml``), by the contract's rule."""
    return contract.style_path(path)


def layer_file(layer: QgsMapLayer) -> str:
    """The file a layer shows (its source without sub-layer or open options)."""
    return layer.source().split("|")[0]


def apply_class_style(layer: QgsMapLayer) -> bool:
    """Style a class layer the engine wrote with the style beside its file (see
    :func:`sidecar_qml`); a class raster without one is shown with its own colour table. Returns
    True when a class style was applied."""
    if not isinstance(layer, (QgsRasterLayer, QgsVectorLayer)) or not layer.isValid():
        return False
    qml = sidecar_qml(layer_file(layer))
    if qml.is_file():
        _msg, ok = layer.loadNamedStyle(str(qml))
        if ok and isinstance(layer.renderer(), (QgsPalettedRasterRenderer,
                                                QgsCategorizedSymbolRenderer)):
            layer.triggerRepaint()
            return True
    return isinstance(layer, QgsRasterLayer) and _colour_table_style(layer)


def _colour_table_style(layer: QgsRasterLayer) -> bool:
    """A paletted renderer from the raster's own colour table (without its transparent nodata
    entry)."""
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
    """Applies the class style (:func:`apply_class_style`) once Processing, or the dock, has
    loaded a class raster or class polygons into the project."""

    # Processing keeps only a C++ pointer: the Python objects must outlive the algorithm run.
    _alive: deque = deque(maxlen=256)

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        if not apply_class_style(layer) and feedback is not None:
            feedback.pushInfo(f"No class style found for {layer.name()}")

    @classmethod
    def create(cls) -> ClassStylePostProcessor:
        """A post-processor kept alive for the rest of the session."""
        pp = cls()
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
