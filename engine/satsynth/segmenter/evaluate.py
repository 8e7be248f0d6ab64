"""Evaluating a trained segmenter on the chips of a store split, and its evaluation report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import progress
from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipSplit, ChipStore
from satsynth.errors import SatSynthError
from satsynth.outputs import check_output
from satsynth.segmenter.model import forward_logits

log = logging.getLogger("satsynth")


def evaluate_chips(model: Any, chips: ChipSplit, normalizer: Normalizer, metrics: Any,
                   batch_size: int, device: Any, indices: np.ndarray | None = None,
                   shard: tuple[int, int] = (1, 0), show_progress: bool = False) -> None:
    """Run ``model`` over chips (all, or ``indices``) and add the results to ``metrics``.

    With ``shard=(n, i)`` process ``i`` of ``n`` takes every n-th batch (the metrics sync)."""
    import torch

    idx = np.arange(len(chips)) if indices is None else np.asarray(indices)
    starts = list(range(0, len(idx), batch_size))[shard[1]::shard[0]]
    was_training = model.training
    model.eval()
    items = progress.track(starts, "evaluate", unit="batch") if show_progress else starts
    with torch.inference_mode():
        for s in items:
            j = idx[s:s + batch_size]
            x = torch.from_numpy(normalizer.to_model(np.asarray(chips.images[j]))).to(device)
            y = torch.from_numpy(np.asarray(chips.labels[j]).astype(np.int64)).to(device)
            metrics.update(forward_logits(model, x).argmax(1), y)
    if was_training:
        model.train()


def _check_same_classes(model_table: ClassTable, data_table: ClassTable, where: Path) -> None:
    a = [(c.id, c.name) for c in model_table.classes]
    b = [(c.id, c.name) for c in data_table.classes]
    if a != b:
        raise SatSynthError(f"the dataset's classes {[n for _, n in b]} differ from the model's "
                            f"{[n for _, n in a]}", where)


def evaluate_dataset(model_dir: str | Path, out: str | Path, dataset: str | Path,
                     split: str = "val", device: str = "auto", batch_size: int = 16
                     ) -> dict[str, Any]:
    """Score a segmenter on ``dataset``'s ``split``; write report.json/.md/.html and
    confusion.png into ``out``."""
    from satsynth.device import resolve_device
    from satsynth.segmenter.metrics import SegmentationMetrics
    from satsynth.segmenter.model import load_segmenter

    check_output(out, "evaluation", inputs=[model_dir, dataset], into=True)
    dev = resolve_device(device)
    model, cfg = load_segmenter(model_dir, dev)
    metrics = SegmentationMetrics(cfg.num_classes, dev)
    store = ChipStore(dataset)
    _check_same_classes(cfg.classes, store.classes, store.path)
    if store.meta.bands != cfg.in_channels:
        raise SatSynthError(f"the dataset has {store.meta.bands} band(s), the model expects "
                            f"{cfg.in_channels}", store.path)
    if not store.has_split(split):
        raise SatSynthError(f"the dataset has no '{split}' split", store.path)
    # asking for a split's scores here is the final evaluation (this is how the test split
    # is opened; training and selection never can)
    chips = store.split(split, final_evaluation=True)
    if len(chips) == 0:
        raise SatSynthError(f"the '{split}' split is empty", store.path)
    if store.meta.synthetic:
        log.warning("%s is synthetic: these scores do not measure real-data accuracy",
                    store.path)
    evaluate_chips(model, chips, cfg.normalization, metrics, batch_size, dev, show_progress=True)
    info = {**model_info(model_dir, cfg), "dataset": str(store.path), "split": split,
            "chips": len(chips), "method": "chips"}
    return write_evaluation(metrics, cfg.classes, out, info)


def model_info(model_dir: str | Path, cfg: Any) -> dict[str, Any]:
    """The report's fields naming the evaluated segmenter."""
    return {"model": str(model_dir), "arch": cfg.arch, "encoder": cfg.encoder}


def write_evaluation(metrics: Any, table: ClassTable, out: str | Path,
                     info: dict[str, Any]) -> dict[str, Any]:
    """Write the scores accumulated in ``metrics`` as the evaluation report in ``out``; returns
    the report's paths and ``miou``."""
    from satsynth.segmenter.report import write_eval_report

    scores = metrics.compute(table.names)
    paths = write_eval_report(scores, Path(out), table, info)
    log.info("mIoU %.4f, overall accuracy %.4f over %d pixels", scores["miou"],
             scores["overall_accuracy"], scores["pixels"])
    return {**{k: str(v) for k, v in paths.items()}, "miou": scores["miou"]}
