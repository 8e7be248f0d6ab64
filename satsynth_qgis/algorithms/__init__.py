"""The SatSynth Processing algorithms, one per file; :data:`ALGORITHMS` is what the provider loads."""

from __future__ import annotations

from .check_engine import CheckEngine
from .prepare_chips import PrepareChips

#: Every algorithm class, in toolbox order.
ALGORITHMS = [
    CheckEngine,
    PrepareChips,
]
