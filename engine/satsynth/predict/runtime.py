"""Which forward runs the model in ``predict`` (``--runtime``): PyTorch or ONNX Runtime, chosen in
one place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from satsynth.contract import RUNTIMES
from satsynth.errors import SatSynthError
from satsynth.predict.forward import Forward, TorchForward
from satsynth.predict.onnx_runtime import (
    OnnxForward,
    cache_folder,
    onnx_available,
    user_cache_root,
)

log = logging.getLogger("satsynth")


def select_forward(runtime: str, model_dir: str | Path, model: Any, cfg: Any, device: Any,
                   overlap: int, tile: int | None = None) -> Forward:
    """The forward for ``--runtime``: ``torch``; ``onnx`` (ONNX Runtime, a clear error when it is
    not installed); ``auto``: ONNX Runtime on a CPU device when it is installed, else PyTorch.
    The ONNX export is cached (:func:`~satsynth.predict.onnx_runtime.cache_folder`); where no
    cache folder can be written, ``auto`` runs PyTorch and ``onnx`` exports for this run only."""
    if runtime not in RUNTIMES:
        raise SatSynthError(f"--runtime {runtime}: choose from {', '.join(RUNTIMES)}")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_available()):
        folder = cache_folder(model_dir)
        if folder is None and runtime == "auto":
            log.info("forward: PyTorch (neither the model folder nor %s can be written, so "
                     "there is no place for the ONNX export)", user_cache_root())
            return TorchForward(model, device, amp=False, tile=tile)
        if folder is None:
            log.info("forward: ONNX Runtime (neither the model folder nor %s can be written: "
                     "the export is kept for this run only)", user_cache_root())
        elif folder != Path(model_dir):
            log.info("forward: ONNX Runtime (the model folder cannot be written: the export is "
                     "cached in %s)", folder)
        else:
            log.info("forward: ONNX Runtime")
        return OnnxForward(model_dir, model, cfg, device, overlap, tile, folder)
    log.info("forward: PyTorch%s", "" if runtime == "torch" or not on_cpu else
             " (onnxruntime is not installed)")
    return TorchForward(model, device, amp=getattr(device, "type", None) == "cuda", tile=tile)
