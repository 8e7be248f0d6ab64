"""Segmentation metrics (torchmetrics): mIoU, per-class IoU and F1, overall accuracy, confusion.

Pixels labeled with the ignore index (255) never count. A class absent from both the reference
and the prediction has no IoU/F1 (``None``) and is left out of the means.
"""

from __future__ import annotations

from typing import Any

from satsynth.data.classes import IGNORE_INDEX


class SegmentationMetrics:
    """Accumulates predictions against references, batch by batch, then reports the scores."""

    def __init__(self, num_classes: int, device: Any = "cpu") -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassJaccardIndex,
        )

        self.num_classes = int(num_classes)
        k, ign = self.num_classes, IGNORE_INDEX
        common = {"num_classes": k, "ignore_index": ign, "validate_args": False}
        self.collection = MetricCollection({
            "iou": MulticlassJaccardIndex(average="none", **common),
            "miou": MulticlassJaccardIndex(average="macro", **common),
            "f1": MulticlassF1Score(average="none", **common),
            "accuracy": MulticlassAccuracy(average="micro", **common),
            "confusion": MulticlassConfusionMatrix(**common),
        }, compute_groups=False).to(device)

    def update(self, preds: Any, target: Any) -> None:
        """Add a batch: ``preds`` class indices (N,H,W) or logits (N,K,H,W); ``target`` (N,H,W)
        class indices with 255 for ignored pixels."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        self.collection.update(preds.reshape(-1), target.reshape(-1).long())

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.collection.reset()

    def compute(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """The scores as plain Python values (JSON-ready)."""
        out = self.collection.compute()
        conf = out["confusion"].long().cpu()
        support = conf.sum(1)  # reference pixels per class
        predicted = conf.sum(0)
        present = (support + predicted) > 0
        iou = [float(v) if p else None for v, p in zip(out["iou"].cpu().tolist(), present.tolist(),
                                                        strict=True)]
        f1 = [float(v) if p else None for v, p in zip(out["f1"].cpu().tolist(), present.tolist(),
                                                      strict=True)]
        f1_present = [v for v in f1 if v is not None]
        pixels = int(conf.sum())
        names = class_names or [f"class {i}" for i in range(self.num_classes)]
        return {
            "miou": float(out["miou"]) if pixels else 0.0,
            "mean_f1": sum(f1_present) / len(f1_present) if f1_present else 0.0,
            "overall_accuracy": float(out["accuracy"]) if pixels else 0.0,
            "pixels": pixels,
            "classes": list(names),
            "iou": iou,
            "f1": f1,
            "support": support.tolist(),
            "confusion": conf.tolist(),
        }
