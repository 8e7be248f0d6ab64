"""The segmenter's forward pass through ONNX Runtime, from an export cached beside the model.

The first prediction with ``--runtime onnx`` (or ``auto`` on a CPU) for a tile size exports the
model to ``model.<H>x<W>.onnx`` (``export.write_onnx``: checked against PyTorch, atomic) in the
segmenter folder, or, where that folder cannot be written (a read-only mount), in a folder of the
user's cache (:func:`cache_folder`). A cached export is used only when its recorded SHA-256
matches ``model.safetensors`` *and* it gives the model's class probabilities on a random tile:
anything else (another graph, other weights under the right metadata) is exported again, with an
info line. Rasters smaller than a tile are padded up to it, so there is one export per tile size;
an export replaces those of earlier weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError
from satsynth.predict import onnx_format
from satsynth.predict.export import write_onnx
from satsynth.predict.forward import Forward, pad_to_tile

log = logging.getLogger("satsynth")

#: Accelerated providers tried before the CPU one, when the onnxruntime build has them and the
#: device is not the CPU: NVIDIA (onnxruntime-gpu), Windows GPUs (onnxruntime-directml), Apple.
ACCELERATED = {"cuda": "CUDAExecutionProvider", "mps": "CoreMLExecutionProvider"}
DIRECTML = "DmlExecutionProvider"
#: The name of a cached export (:func:`cache_path`).
CACHE_NAME = re.compile(r"model\.\d+x\d+\.onnx")


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


def user_cache_root() -> Path:
    """The user's cache folder for ONNX exports of models whose folder cannot be written
    (``$XDG_CACHE_HOME/satsynth/onnx``, by default ``~/.cache/satsynth/onnx``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "satsynth" / "onnx"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".satsynth-probe."):
            return True
    except OSError:
        return False


def cache_folder(model_dir: str | Path) -> Path | None:
    """Where a segmenter's ONNX exports are kept: its own folder, or where that cannot be written
    (a read-only mount) a folder of the user's cache named after the model folder's path; None
    when neither can be written."""
    model_dir = Path(model_dir)
    if _writable(model_dir):
        return model_dir
    real = os.path.realpath(model_dir)
    key = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    folder = user_cache_root() / f"{Path(real).name[:40]}-{key}"
    return folder if _writable(folder) else None


def clean_stale_exports(folder: Path, digest: str, keep: Path) -> list[Path]:
    """Remove the cached exports in ``folder`` (``model.<H>x<W>.onnx``) made from other weights
    than ``digest`` (a retrained model), except ``keep``; returns what went."""
    removed = []
    for f in folder.glob("model.*x*.onnx"):
        if f == keep or not CACHE_NAME.fullmatch(f.name):
            continue
        try:
            meta = onnx_format.read_metadata(f)
        except SatSynthError:
            meta = {}
        if meta.get(onnx_format.DIGEST_KEY) != digest:
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


class OnnxForward(Forward):
    """Class probabilities ``(N, K, h, w)`` of normalized tiles through ONNX Runtime; one session
    per tile size, its graph exported once into the cache folder (:func:`cache_folder`) and
    reused once it is checked to give the model's output. Tiles smaller than ``tile`` (a raster
    smaller than one tile) are padded up to it (:func:`~satsynth.predict.forward.pad_to_tile`,
    as in every runtime), so one export serves every raster.
    """

    name = "onnx"

    def __init__(self, model_dir: str | Path, model: Any, cfg: Any, device: Any,
                 overlap: int, tile: int | None = None, folder: Path | None = None) -> None:
        self.ort = onnx_format.import_onnxruntime("--runtime onnx")
        self.model_dir, self.model, self.cfg = Path(model_dir), model, cfg
        self.device, self.overlap, self.tile = device, overlap, tile
        self.providers = providers_for(device, self.ort.get_available_providers())
        self.digest = onnx_format.weights_digest(model_dir)
        self.sessions: dict[tuple[int, int], Any] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        folder = folder or cache_folder(model_dir)
        self.folder = folder if folder is not None else self._scratch_folder()
        self.exported: list[Path] = []

    def __call__(self, x: np.ndarray) -> Any:
        import torch

        h, w = int(x.shape[-2]), int(x.shape[-1])
        x = pad_to_tile(x, self.tile)
        th, tw = int(x.shape[-2]), int(x.shape[-1])
        sess = self.sessions.get((th, tw)) or self._session(th, tw)
        probs = onnx_format.run_session(sess, x)[..., :h, :w]
        return torch.from_numpy(np.ascontiguousarray(probs)).to(self.device)

    def _scratch_folder(self) -> Path:
        """A temporary folder for exports kept for this run only (nowhere to cache them)."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="satsynth-onnx-")
        return Path(self._scratch.name)

    def _open(self, path: Path) -> Any:
        return onnx_format.open_session(self.ort, path, self.providers)

    def _cached(self, path: Path, tile_h: int, tile_w: int) -> Any:
        """The session of a cached export that holds this model, else None (with why)."""
        from satsynth.predict.export import matches_model

        try:
            sess = self._open(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable cache is re-exported
            log.info("%s is not readable (%s): exporting again", path.name,
                     onnx_format.first_line(exc))
            return None
        meta = sess.get_modelmeta().custom_metadata_map
        if meta.get(onnx_format.DIGEST_KEY) != json.dumps(self.digest):
            log.info("%s was exported from other weights: exporting again", path.name)
            return None
        if not matches_model(self.model, path, self.cfg.in_channels, tile_h, tile_w, sess):
            log.info("%s does not give this model's output (another graph or other weights "
                     "under the same name): exporting again", path)
            return None
        return sess

    def _session(self, tile_h: int, tile_w: int) -> Any:
        if self.model is None:
            raise RuntimeError(f"no session for {tile_w} x {tile_h} px tiles of a forward made "
                               f"for {self.tile} px tiles")
        path = self.folder / cache_path(self.model_dir, tile_h, tile_w).name
        if path.exists() and not path.is_file():  # not ours to replace: this run only
            log.info("%s is not a file: the ONNX export is kept for this run only", path)
            path = self._scratch_folder() / path.name
        sess = self._cached(path, tile_h, tile_w) if path.is_file() else None
        if sess is None:
            log.info("exporting the model to ONNX for %d x %d tiles into %s (once per model and "
                     "tile size)", tile_w, tile_h, self.folder)
            write_onnx(self.model, self.cfg, path, tile_h, tile_w, overlap=self.overlap,
                       digest=self.digest)
            for old in clean_stale_exports(self.folder, self.digest, path):
                log.info("removed %s, an export of earlier weights", old.name)
            self.exported.append(path)
            try:
                sess = self._open(path)
            except Exception as exc:  # noqa: BLE001
                raise SatSynthError(f"ONNX Runtime cannot load the export "
                                    f"({onnx_format.first_line(exc)})", path) from None
        log.info("ONNX Runtime %s, providers %s", self.ort.__version__,
                 ", ".join(sess.get_providers()))
        self.sessions[(tile_h, tile_w)] = sess
        if self.tile:  # every input is padded to this one size: PyTorch's copy is not needed
            self.model = None
        return sess
