"""The segmenter's forward pass through ONNX Runtime, from an export cached in the model folder.

The first prediction with ``--runtime onnx`` (or ``auto`` on a CPU) for a tile shape exports the
model to ``model.<H>x<W>.onnx`` in the segmenter folder (``export.write_onnx``: checked against
PyTorch, atomic) and later runs reuse it while its recorded SHA-256 matches
``model.safetensors``; a folder whose weights changed gets a fresh export. Where the folder is
read-only, the export goes to a temporary folder for this run only.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError
from satsynth.predict import onnx_format
from satsynth.predict.export import write_onnx
from satsynth.predict.forward import Forward

log = logging.getLogger("satsynth")

#: Accelerated providers tried before the CPU one, when the onnxruntime build has them and the
#: device is not the CPU: NVIDIA (onnxruntime-gpu), Windows GPUs (onnxruntime-directml), Apple.
ACCELERATED = {"cuda": "CUDAExecutionProvider", "mps": "CoreMLExecutionProvider"}
DIRECTML = "DmlExecutionProvider"


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's ``onnx`` package can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_path(model_dir: str | Path, tile_h: int, tile_w: int) -> Path:
    """Where the export for ``tile_h x tile_w`` tiles is kept in a segmenter folder."""
    return Path(model_dir) / f"model.{tile_h}x{tile_w}.onnx"


def providers_for(device: Any, available: list[str]) -> list[str]:
    """ONNX Runtime providers for a torch device: its accelerator's first where the build has
    it, DirectML on a CPU device where the build has it, and always the CPU provider."""
    kind = getattr(device, "type", str(device))
    first = [ACCELERATED[kind]] if kind in ACCELERATED else [DIRECTML] if kind == "cpu" else []
    return [p for p in first if p in available] + ["CPUExecutionProvider"]


class OnnxForward(Forward):
    """Class probabilities ``(N, K, h, w)`` of normalized tiles through ONNX Runtime; one session
    per tile shape, its graph exported once into the model folder and reused."""

    name = "onnx"

    def __init__(self, model_dir: str | Path, model: Any, cfg: Any, device: Any,
                 overlap: int) -> None:
        self.ort = onnx_format.import_onnxruntime("--runtime onnx")
        self.model_dir, self.model, self.cfg = Path(model_dir), model, cfg
        self.device, self.overlap = device, overlap
        self.providers = providers_for(device, self.ort.get_available_providers())
        self.digest = onnx_format.weights_digest(model_dir)
        self.sessions: dict[tuple[int, int], Any] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.exported: list[Path] = []

    def __call__(self, x: np.ndarray) -> Any:
        import torch

        shape = (int(x.shape[-2]), int(x.shape[-1]))
        sess = self.sessions.get(shape) or self._session(*shape)
        return torch.from_numpy(onnx_format.run_session(sess, x)).to(self.device)

    def _open(self, path: Path) -> Any:
        return onnx_format.open_session(self.ort, path, self.providers)

    def _session(self, tile_h: int, tile_w: int) -> Any:
        path = cache_path(self.model_dir, tile_h, tile_w)
        sess = None
        if path.is_file():
            try:
                sess = self._open(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is re-exported
                log.info("%s is not readable (%s): exporting again", path.name,
                         onnx_format.first_line(exc))
            else:
                meta = sess.get_modelmeta().custom_metadata_map
                if meta.get(onnx_format.DIGEST_KEY) != json.dumps(self.digest):
                    log.info("%s was exported from other weights: exporting again", path.name)
                    sess = None
        if sess is None:
            log.info("exporting the model to ONNX for %d x %d tiles (once per model and tile "
                     "size)", tile_w, tile_h)
            try:
                write_onnx(self.model, self.cfg, path, tile_h, tile_w, overlap=self.overlap,
                           digest=self.digest)
            except OSError as exc:  # a read-only model folder: keep the export for this run
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryDirectory(prefix="satsynth-onnx-")
                log.warning("cannot write %s (%s): the ONNX export is kept for this run only",
                            path, exc.strerror or exc)
                path = Path(self._scratch.name) / path.name
                write_onnx(self.model, self.cfg, path, tile_h, tile_w, overlap=self.overlap,
                           digest=self.digest)
            self.exported.append(path)
            try:
                sess = self._open(path)
            except Exception as exc:  # noqa: BLE001
                raise SatSynthError(f"ONNX Runtime cannot load the export "
                                    f"({onnx_format.first_line(exc)})", path) from None
        log.info("ONNX Runtime %s, providers %s", self.ort.__version__,
                 ", ".join(sess.get_providers()))
        self.sessions[(tile_h, tile_w)] = sess
        return sess
