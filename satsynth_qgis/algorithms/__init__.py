"""The SatSynth Processing algorithms, one per file; :data:`ALGORITHMS` is what the provider loads."""

from __future__ import annotations

from .check_engine import CheckEngine
from .evaluate_segmenter import EvaluateSegmenter
from .export_segmenter import ExportSegmenter
from .prepare_chips import PrepareChips
from .run_experiment import RunExperiment
from .run_pipeline import RunPipeline
from .segment_raster import SegmentRaster
from .synthesize import Synthesize
from .train_generator import TrainGenerator
from .train_segmenter import TrainSegmenter
from .train_upsampler import TrainUpsampler

#: Every algorithm class, in toolbox order.
ALGORITHMS = [
    CheckEngine,
    PrepareChips,
    TrainGenerator,
    TrainUpsampler,
    Synthesize,
    TrainSegmenter,
    EvaluateSegmenter,
    RunExperiment,
    SegmentRaster,
    ExportSegmenter,
    RunPipeline,
]
