"""The prediction stage: a trained segmenter applied to rasters of any size, streamed by windows.

``predict.predict_raster`` is the entry point (also ``satsynth predict``): sliding windows read
with rasterio, blended smoothly (``blend``), written as a styled class GeoTIFF row band by row band
(``writer``), optionally vectorized block by block (``vectorize``).
"""
