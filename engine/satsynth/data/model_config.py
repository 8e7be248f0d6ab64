"""The base of model configs (a model folder's ``config.json``: the generator's, the upsampler's,
the segmenter's).

Inside the engine a config holds the class table and the normalization its model was trained with
as :class:`ClassTable` and :class:`Normalizer` objects; their JSON forms exist only in
:meth:`ModelConfig.to_dict` and :meth:`ModelConfig.from_dict`, which :mod:`satsynth.checkpoint`
writes and reads.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Base of the model-config dataclasses, which declare ``classes: ClassTable`` and
    ``normalization: Normalizer`` among their fields (it declares none itself, so each config
    keeps its own key order in config.json)."""

    classes: ClassTable
    normalization: Normalizer
    #: the model kind that :meth:`from_dict`'s errors name
    KIND: ClassVar[str] = "model"

    @property
    def num_classes(self) -> int:
        """K, the number of classes the model predicts."""
        return self.classes.num_classes

    def to_dict(self) -> dict[str, Any]:
        """config.json's form: every field in declaration order, the objects as JSON."""
        d = asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        d["classes"] = self.classes.to_dict()
        d["normalization"] = self.normalization.to_dict()
        return d

    @classmethod
    def _objects_from_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The fields that config.json holds in another form than the engine, read from it."""
        return {"classes": ClassTable.from_dict(d["classes"], where="classes"),
                "normalization": Normalizer.from_dict(d["normalization"])}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any], where: str | Path | None = None) -> C:
        """Read config.json's form (keys this version does not know are left out); an
        incomplete or malformed one raises one :class:`SatSynthError` line naming ``where``."""
        try:
            known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            kw = {k: v for k, v in d.items() if k in known}
            kw.update(cls._objects_from_dict(d))
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise SatSynthError(f"{cls.KIND} config.json is incomplete or malformed ({exc})",
                                where) from None
