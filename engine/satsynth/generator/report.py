"""What a synthetic set looks like next to the real data: class shares, TV distance, sample grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from satsynth.data.classes import ClassTable
from satsynth.io import atomic_path


def class_shares(counts: np.ndarray) -> np.ndarray:
    """Pixel counts per class -> shares summing to 1 (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two class distributions (0 = same, 1 = disjoint)."""
    p, q = class_shares(p), class_shares(q)
    return float(0.5 * np.abs(p - q).sum())


def plot_class_shares(real: np.ndarray, synthetic: np.ndarray, table: ClassTable, path: Path,
                      tv: float | None = None) -> Path:
    """Grouped bar chart of real vs synthetic class pixel shares (as the paper's figure 2c)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = table.num_classes
    x = np.arange(k)
    colors = [np.asarray(c.color) / 255.0 for c in table.classes]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * k + 2), 3.6), dpi=100)
    ax.bar(x - 0.2, real, 0.4, color="0.6")
    ax.bar(x + 0.2, synthetic, 0.4, color=colors, edgecolor="black", lw=0.5)
    ax.set_xticks(x, table.names, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_ylabel("share of pixels")
    title = "class pixel shares"
    if tv is not None:
        title += f" (TV distance {tv:.3f})"
    ax.set_title(title)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="0.6", label="real (training labels)"),
                       Patch(facecolor="white", edgecolor="black",
                             label="synthetic (class colours)")])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def to_display(images: np.ndarray) -> np.ndarray:
    """(N,C,H,W) model-space images in [-1,1] -> (N,H,W,3) floats in [0,1] (first 3 bands, or
    the first band as grey)."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    rgb = x[:, :3] if x.shape[1] >= 3 else np.repeat(x[:, :1], 3, axis=1)
    return rgb.transpose(0, 2, 3, 1)


def sample_grid(images: np.ndarray, labels: np.ndarray, table: ClassTable, path: Path,
                per_row: int = 4, min_px: int = 96) -> Path:
    """PNG grid of pairs, each image beside its coloured mask (nearest-neighbour enlarged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    s = images.shape[-1]
    scale = max(1, int(np.ceil(min_px / s)))
    rgb = to_display(images)
    pal = table.palette_by_index().astype(np.float32) / 255.0
    masks = pal[np.asarray(labels)]
    rows = max(1, int(np.ceil(n / per_row)))
    gap = 2 * scale
    tile = s * scale
    w = per_row * (2 * tile + 3 * gap) + gap
    h = rows * (tile + gap) + gap
    canvas = np.ones((h, w, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, per_row)
        y = gap + r * (tile + gap)
        x = gap + c * (2 * tile + 3 * gap)
        canvas[y:y + tile, x:x + tile] = np.kron(rgb[i], np.ones((scale, scale, 1)))
        canvas[y:y + tile, x + tile + gap:x + 2 * tile + gap] = np.kron(
            masks[i], np.ones((scale, scale, 1)))
    with atomic_path(path) as tmp:
        plt.imsave(tmp, canvas, format="png")
    return path
