"""SatSynth engine: labeled rasters in, joint image-mask diffusion, segmentation out."""

__version__ = "0.1.0"

#: Version of the on-disk formats (chip stores, checkpoints). Bumped when they change.
FORMAT_VERSION = 1
