"""Per-band normalization shared by training, synthesis and prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from satsynth.contract import ContractError, parse_normalization
from satsynth.errors import SatSynthError


@dataclass
class Normalizer:
    """Maps source values linearly from [low, high] (per band) to [-1, 1], clipped."""

    low: list[float]
    high: list[float]
    dtype: str = "uint8"

    @property
    def bands(self) -> int:
        return len(self.low)

    def _lh(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1,) + (1,) * (ndim - 1) if ndim in (3,) else (1, -1) + (1,) * (ndim - 2)
        lo = np.asarray(self.low, dtype=np.float32).reshape(shape)
        hi = np.asarray(self.high, dtype=np.float32).reshape(shape)
        return lo, np.maximum(hi, lo + 1e-6)

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Map source values to the models' range.

        Non-finite values (a float image's NaN/inf nodata, kept as they are in a dataset's chips,
        whose labels are ignore there) become 0, the value ``predict`` gives pixels without data.

        Args:
            x (`np.ndarray`):
                ``(C, H, W)`` or ``(N, C, H, W)`` source values.

        Returns:
            `np.ndarray`: float32 of the same shape in [-1, 1]: ``[low, high]`` mapped linearly per
            band, clipped.
        """
        lo, hi = self._lh(x.ndim)
        y = (x.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0
        if np.issubdtype(x.dtype, np.floating):
            np.nan_to_num(y, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(y, -1.0, 1.0, out=y)

    def from_model(self, y: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_model`, rounded and clipped to the source dtype.

        Args:
            y (`np.ndarray`):
                ``(C, H, W)`` or ``(N, C, H, W)`` values in [-1, 1] (clipped to it first).

        Returns:
            `np.ndarray`: the source values, in the normalizer's dtype.
        """
        lo, hi = self._lh(y.ndim)
        x = (np.clip(y.astype(np.float32), -1, 1) + 1.0) / 2.0 * (hi - lo) + lo
        dt = np.dtype(self.dtype)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(dt)

    def to_dict(self) -> dict[str, Any]:
        return {"low": [float(v) for v in self.low], "high": [float(v) for v in self.high],
                "dtype": self.dtype, "method": "percentile-2-98"}

    @classmethod
    def from_dict(cls, d: Any) -> Normalizer:
        """Build from :meth:`to_dict`'s form, checked by the contract's schema.

        Args:
            d (`Any`):
                ``{"low": [...], "high": [...], "dtype": ...}``
                (:func:`satsynth.contract.parse_normalization`).

        Returns:
            `Normalizer`: the normalizer.

        Raises:
            `SatSynthError`: a malformed one (one line).
        """
        try:
            spec = parse_normalization(d)
        except ContractError as exc:
            raise SatSynthError(str(exc)) from None
        return cls(spec.low, spec.high, spec.dtype)

    @classmethod
    def fit(cls, samples: np.ndarray, dtype: str, p_low: float = 2.0, p_high: float = 98.0) -> Normalizer:
        """Fit per-band percentiles of valid pixel samples.

        Args:
            samples (`np.ndarray`):
                ``(C, M)`` valid pixel values of each band.
            dtype (`str`):
                The source dtype (what :meth:`from_model` returns).
            p_low (`float`, *optional*, defaults to 2.0):
                The percentile mapped to -1.
            p_high (`float`, *optional*, defaults to 98.0):
                The percentile mapped to 1 (at least ``low + 1`` where a band is constant).

        Returns:
            `Normalizer`: the fitted normalizer.
        """
        lo = np.percentile(samples, p_low, axis=1)
        hi = np.percentile(samples, p_high, axis=1)
        hi = np.where(hi <= lo, lo + 1.0, hi)
        return cls([float(v) for v in lo], [float(v) for v in hi], dtype)
