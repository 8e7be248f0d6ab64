"""Fine colour noise and edges of chip stores: synthetic samples against the real chips.

Issue 20 (0e): the generator's samples carry far more high-frequency colour noise than the chips
it learned from. For each chip store given (a prepared dataset or a synthetic folder, their
``train.images.npy``), prints the RMS of the chroma (R-G, B-G on 0..1) minus its 3 x 3 mean, the
same for luminance, and the mean Sobel gradient magnitude of the luminance (RGB chips).

    .venv/bin/python benchmarks/compare_realism.py demo-output/dataset demo-output/synthetic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import sobel, uniform_filter


def realism(images: np.ndarray) -> tuple[float, float, float]:
    """Chroma and luma high-frequency RMS and mean gradient magnitude of ``(N, 3, H, W)`` uint8."""
    x = images.astype(np.float32) / 255.0
    chroma = np.stack([x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]], 1)
    chroma_hf = chroma - uniform_filter(chroma, size=(1, 1, 3, 3), mode="reflect")
    luma = x.mean(1)
    luma_hf = luma - uniform_filter(luma, size=(1, 3, 3), mode="reflect")
    edges = np.hypot(sobel(luma, axis=1), sobel(luma, axis=2))
    return (float(np.sqrt((chroma_hf ** 2).mean())), float(np.sqrt((luma_hf ** 2).mean())),
            float(edges.mean()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", type=Path, help="dataset or synthetic folders")
    args = ap.parse_args()
    print(f"{'store':40s} {'chroma HF rms':>14s} {'luma HF rms':>12s} {'mean |grad|':>12s}")
    for store in args.stores:
        images = np.load(store / "train.images.npy", mmap_mode="r")
        if images.ndim != 4 or images.shape[1] != 3:
            print(f"{store}: not RGB chips ({images.shape})", file=sys.stderr)
            return 2
        c, lum, e = realism(np.asarray(images))
        print(f"{store.name:40s} {c:14.4f} {lum:12.4f} {e:12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
