"""The prediction stage: a trained segmenter applied to rasters of any size, streamed by windows.

``predict.predict_raster`` is the entry point (also ``satsynth predict``). One chip walks down the
modules and never returns to one it has left: ``source`` (read, normalize) -> ``windows`` (the
region and the tiling plan) -> ``runtime`` (the forward) -> ``blend`` (overlaps) -> ``writer``
(the styled class GeoTIFF, row band by row band) -> ``vectorize`` (polygons, block by block);
``tiles`` drives that walk over one region, ``bands`` splits it across processes.
"""
