"""The run folder: where one run's stages write, and the record of the parameters they used.

::

    <output folder>/<run name>/
        classes.json        the class table given to Prepare
        run.json            every stage's algorithm id, parameters and outputs (to repeat a run)
        dataset/            Prepare (chip store + chips.gpkg)
        generator/          Train generator
        synthetic/          Synthesize
        segmenter/          Train segmenter
        evaluation/         Evaluate
        experiment/         Experiment (runs.json: a cancelled experiment resumes here)
        predictions/        Segment (one class raster per segmented layer)
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..folders import has_marker


def safe_name(text: str) -> str:
    """A file-system friendly version of a layer or run name (spaces kept)."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", text).strip(" .")
    return cleaned or "run"


class _Below:
    """A path in a run's folder, read as an attribute of :class:`RunFolder` (``run.dataset``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunFolder, owner: type | None = None) -> Path:
        return run.root / self.name


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's outputs (see the module's layout)."""

    root: Path

    classes = _Below("classes.json")
    record = _Below("run.json")
    # one folder a stage, named for the folder kind it holds
    dataset = _Below("dataset")
    generator = _Below("generator")
    synthetic = _Below("synthetic")
    segmenter = _Below("segmenter")
    evaluation = _Below("evaluation")
    experiment = _Below("experiment")

    @classmethod
    def of(cls, output_folder: str | Path, run_name: str) -> RunFolder:
        return cls(Path(output_folder) / safe_name(run_name))

    def prediction(self, layer_name: str, kind: str = "classes") -> Path:
        """``classes`` and ``confidence`` GeoTIFFs, ``polygons`` GeoPackage."""
        suffix = ".gpkg" if kind == "polygons" else ".tif"
        return self.root / "predictions" / f"{safe_name(layer_name)}_{kind}{suffix}"

    def has(self, kind: str) -> bool:
        """Whether the run's ``kind`` folder (dataset, generator, synthetic...) holds its marker:
        decides which stage buttons are enabled."""
        return has_marker(self.root / kind, kind)

    # the record
    def read_record(self) -> dict[str, Any]:
        try:
            data = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record_stage(self, stage: str, algorithm_id: str, parameters: dict[str, Any],
                     ok: bool, outputs: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
        """Add (or replace) one stage's entry in run.json, written atomically."""
        data = self.read_record()
        data.setdefault("run", self.root.name)
        data.setdefault("stages", {})
        data["stages"][stage] = {
            "algorithm": algorithm_id,
            "parameters": {k: plain(v) for k, v in parameters.items()},
            "ok": bool(ok),
            "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            "outputs": {k: plain(v) for k, v in (outputs or {}).items()},
        }
        data.update(extra or {})
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(self.record.name + ".partial")
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.record)
        return self.record


def plain(value: Any) -> Any:
    """A JSON-friendly form of a Processing parameter value (layers become their sources)."""
    from qgis.core import (
        QgsMapLayer,
        QgsProcessingFeatureSourceDefinition,
        QgsProcessingOutputLayerDefinition,
        QgsRectangle,
        QgsReferencedRectangle,
    )

    if isinstance(value, QgsMapLayer):
        return value.source()
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        return value.sink.staticValue()
    if isinstance(value, QgsProcessingFeatureSourceDefinition):
        return {"source": value.source.staticValue(), "selected_only": value.selectedFeaturesOnly}
    if isinstance(value, QgsReferencedRectangle):
        return (f"{value.xMinimum()},{value.xMaximum()},{value.yMinimum()},{value.yMaximum()} "
                f"[{value.crs().authid()}]")
    if isinstance(value, QgsRectangle):
        return f"{value.xMinimum()},{value.xMaximum()},{value.yMinimum()},{value.yMaximum()}"
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
