"""The data stage: labeled rasters in, normalized training chips with georeference out."""
