"""Putting a finished stage's layers into the project, in a layer group named after the run.

Processing algorithms list the layers to load in the context (``layersToLoadOnCompletion``), with
an optional post-processor that styles them by class. The toolbox loads them at the top of the
layer tree; the dock loads them into the run's group instead, replacing the layers of an earlier
run of the same stage (same file), and runs their post-processors as the toolbox does (which
style class layers with the engine's style).
"""

from __future__ import annotations

from qgis.core import (
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
)


def run_group(project: QgsProject, name: str) -> QgsLayerTreeGroup:
    """The layer group for a run (created at the top of the layer tree when missing)."""
    root = project.layerTreeRoot()
    group = root.findGroup(name)
    if group is None:
        group = root.insertGroup(0, name)
    return group


def _remove_same_source(group: QgsLayerTreeGroup, project: QgsProject, layer: QgsMapLayer) -> None:
    """Drop layers of an earlier run that show the same file (and sub-layer)."""
    for node in group.findLayers():
        old = node.layer()
        if old is not None and old.id() != layer.id() and old.source() == layer.source():
            project.removeMapLayer(old.id())


def load_result_layers(context: QgsProcessingContext, feedback: QgsProcessingFeedback | None,
                       group_name: str, project: QgsProject | None = None) -> list[QgsMapLayer]:
    """Load every layer the algorithm asked for into the run's group; returns them in order."""
    project = project or context.project() or QgsProject.instance()
    group = run_group(project, group_name)
    loaded: list[QgsMapLayer] = []
    for ref, details in context.layersToLoadOnCompletion().items():
        layer = QgsProcessingUtils.mapLayerFromString(ref, context)
        if layer is not None and project.mapLayer(layer.id()) is not None:
            # the project shows this file from an earlier run: the file was replaced, so drop
            # that stale layer and load the new file
            project.removeMapLayer(layer.id())
            layer = QgsProcessingUtils.mapLayerFromString(ref, context)
        if layer is None or not layer.isValid():
            if feedback is not None:
                feedback.reportError(f"Could not load the result layer {ref}", False)
            continue
        if context.temporaryLayerStore().mapLayer(layer.id()) is not None:
            layer = context.takeResultLayer(layer.id())
        if details.name:
            layer.setName(details.name)
        _remove_same_source(group, project, layer)
        project.addMapLayer(layer, False)
        group.insertLayer(len(loaded), layer)
        post = details.postProcessor()  # the class style, as in the toolbox
        if post is not None:
            post.postProcessLayer(layer, context, feedback)
        loaded.append(layer)
    context.setLayersToLoadOnCompletion({})
    return loaded
