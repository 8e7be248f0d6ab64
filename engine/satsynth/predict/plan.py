"""What one ``predict`` run was asked to do: :class:`PredictPlan`, built once from the command
line's or the API's arguments and checked before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from satsynth.contract import PredictFields, style_path
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.predict.aoi import parse_extent


@dataclass(frozen=True)
class PredictPlan:
    """The inputs, outputs and options of one prediction (see
    :func:`satsynth.predict.predict.predict_raster` for their meaning); ``box`` is the parsed
    ``--extent``."""

    model_dir: Path
    image: Path
    out: Path
    confidence: Path | None = None
    vector: Path | None = None
    tile: int = PredictFields.tile
    overlap: int = PredictFields.overlap
    batch: int = PredictFields.batch
    device: str = PredictFields.device
    runtime: str = PredictFields.runtime
    box: tuple[float, float, float, float] | None = None
    mask: Path | None = None
    match_resolution: bool = False
    cog: bool = False
    simplify: float = 0.0
    min_area: float = 0.0

    @classmethod
    def build(cls, model_dir: str | Path, image: str | Path, out: str | Path, *,
              confidence: str | Path | None = None, vector: str | Path | None = None,
              extent: str | Sequence[float] | None = None, mask: str | Path | None = None,
              **options: object) -> PredictPlan:
        """The plan for these arguments, checked: output names and places
        (:func:`satsynth.outputs.check_output`), ``--simplify``/``--min-area`` and ``--extent``.

        Args:
            model_dir: the segmenter folder.
            image: the raster to segment.
            out: the class GeoTIFF to write.
            confidence: the confidence GeoTIFF to write, if any.
            vector: the polygon GeoPackage to write, if any.
            extent: ``"xmin,ymin,xmax,ymax"`` or four numbers in the image's CRS, if any.
            mask: a polygon layer to predict inside, if any.
            **options: the other fields of the plan by name (``tile``, ``overlap``, ``batch``,
                ``device``, ``runtime``, ``match_resolution``, ``cog``, ``simplify``,
                ``min_area``).

        Returns:
            The plan; a one-line :class:`~satsynth.errors.SatSynthError` for a bad argument.
        """
        plan = cls(Path(model_dir), Path(image), Path(out),
                   confidence=Path(confidence) if confidence else None,
                   vector=Path(vector) if vector else None, mask=Path(mask) if mask else None,
                   **options)  # type: ignore[arg-type]
        plan.check_outputs()
        if plan.simplify < 0 or plan.min_area < 0:
            raise SatSynthError("--simplify and --min-area must not be negative")
        return replace(plan, box=parse_extent(extent))

    def check_outputs(self) -> None:
        """Refuse outputs that collide, have the wrong kind of name, or may not be written."""
        out, conf, vec = self.out, self.confidence, self.vector
        finals = [p.resolve() for p in (out, conf, vec) if p is not None]
        if len(set(finals)) != len(finals):
            raise SatSynthError("--out, --confidence and --vector must be different files")
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise SatSynthError("the prediction is written as GeoTIFF: use a .tif name", out)
        if conf is not None and conf.suffix.lower() not in (".tif", ".tiff"):
            raise SatSynthError("the confidence raster is written as GeoTIFF: use a .tif name",
                                conf)
        if vec is not None and vec.suffix.lower() != ".gpkg":
            raise SatSynthError("polygons are written to a GeoPackage: use a .gpkg name", vec)
        inputs = (self.model_dir, self.image, self.mask)
        for p in (out, self.style, conf, vec, self.vector_style):
            if p is not None:
                check_output(p, "file", inputs=inputs)

    @property
    def style(self) -> Path:
        """The QGIS style written beside the class raster."""
        return style_path(self.out)

    @property
    def vector_style(self) -> Path | None:
        """The style the class polygons get beside them: None without ``--vector`` or where it is
        the raster's own (named alike: the one file styles both)."""
        if self.vector is None or style_path(self.vector).resolve() == self.style.resolve():
            return None
        return style_path(self.vector)
