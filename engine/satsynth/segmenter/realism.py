"""FID/KID of synthetic chips against real ones (torchmetrics).

They need Inception weights that SatSynth never downloads: they are computed only when the user
gives a local weights file (``--fid-weights``), and labelled with the feature extractor used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError

#: Real chips read for FID/KID at most (features of a random subset of the training chips).
FID_MAX_REAL = 2048


def real_store(real: str | Path | None, cfg: Any, segmenter: str | Path) -> ChipStore:
    """The real chips of FID/KID: ``real``, or the segmenter's training dataset."""
    path = real or cfg.training.get("dataset")
    if not path:
        raise SatSynthError("FID/KID need the real chips: give --real DATASET", segmenter)
    return ChipStore(path)


def _uint8_rgb(images: np.ndarray, normalizer: Normalizer) -> Any:
    import torch

    from satsynth.generator.report import to_display

    rgb = to_display(normalizer.to_model(np.asarray(images)))  # (N,H,W,3) in [0,1]
    return torch.from_numpy((rgb * 255 + 0.5).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def fid_kid(synthetic: ChipStore, real: ChipStore, weights: str | Path | None = None,
            feature: Any = None, device: Any = "cpu", batch_size: int = 64,
            seed: int = 0) -> dict[str, Any]:
    """FID and KID (torchmetrics) between synthetic and real chips.

    Args:
        synthetic: the synthetic chips (all of ``train``).
        real: the real chips (up to ``FID_MAX_REAL`` of ``train``, a random subset by ``seed``).
            Both are shown as 8-bit RGB (first three bands, the real dataset's normalization).
        weights: a local torch-fidelity InceptionV3 weights file, or
        feature: an ``nn.Module`` taking uint8 (N, 3, H, W) images (exactly one of the two).
        device, batch_size: how the chips go through the extractor.

    Returns:
        ``fid``, ``kid_mean``, ``kid_std``, the extractor's name and the chip counts.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if (weights is None) == (feature is None):
        raise SatSynthError("FID/KID need either a local weights file or a feature extractor")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise SatSynthError("Inception weights file not found", weights)
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise SatSynthError("--fid-weights needs torch-fidelity: pip install "
                                "'satsynth[fid]' (or torch-fidelity)") from None
        label = f"InceptionV3 pool features (torch-fidelity), weights {weights}"
    else:
        label = f"custom feature extractor {type(feature).__name__}"
    syn = synthetic.split("train")
    tr = real.split("train")
    rng = np.random.default_rng(seed)
    real_idx = np.sort(rng.choice(len(tr), size=min(len(tr), FID_MAX_REAL), replace=False))
    n = min(len(syn), len(real_idx))
    if n < 2:
        raise SatSynthError("FID/KID need at least 2 synthetic and 2 real chips", synthetic.path)
    kw: dict[str, Any] = ({"feature": 2048, "feature_extractor_weights_path": str(weights)}
                          if weights is not None else {"feature": feature})
    try:
        fid = FrechetInceptionDistance(**kw).to(device)
    except Exception as exc:  # noqa: BLE001 - torch-fidelity/torch raise many kinds on a bad file
        raise SatSynthError(f"cannot build the feature extractor ({exc})", weights) from None
    # KID takes no weights path: it shares FID's extractor, so nothing is ever downloaded
    kid = KernelInceptionDistance(feature=fid.inception, subset_size=min(100, n)).to(device)
    norm = real.normalizer
    with progress.task("fid-kid", total=len(real_idx) + len(syn), unit="chip") as bar:
        for arr, idx, is_real in ((tr, real_idx, True), (syn, np.arange(len(syn)), False)):
            for s in range(0, len(idx), batch_size):
                x = _uint8_rgb(arr.images[idx[s:s + batch_size]], norm).to(device)
                fid.update(x, real=is_real)
                kid.update(x, real=is_real)
                bar.update(len(x))
    kid_mean, kid_std = kid.compute()
    return {"fid": round(float(fid.compute()), 4), "kid_mean": round(float(kid_mean), 6),
            "kid_std": round(float(kid_std), 6), "feature_extractor": label,
            "real_chips": int(len(real_idx)), "synthetic_chips": int(len(syn)),
            "note": "chips are resized to the extractor's input size; compare only with figures "
                    "from the same extractor, chip size and dataset"}
