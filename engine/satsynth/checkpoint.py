"""Model folders: safetensors weights plus a JSON config. Never pickle.

A model folder holds ``config.json`` (``kind``, ``format_version``, ``satsynth_version`` and
everything needed to rebuild and use the model) and one ``<name>.safetensors`` per tensor group
(``model``, ``ema``, ``optimizer``...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from satsynth import FORMAT_VERSION, __version__
from satsynth.contract import ContractError, parse_class_table, parse_normalization, strict_int
from satsynth.errors import SatSynthError
from satsynth.io import atomic_dir, read_json, umask_mode, write_json


def save_model_dir(path: str | Path, kind: str, config: dict[str, Any],
                   tensors: dict[str, dict[str, Any]], extra_files: dict[str, str] | None = None
                   ) -> Path:
    """Write a complete model folder atomically (it replaces ``path`` when done)."""
    from safetensors.torch import save_file

    path = Path(path)
    for name, state in tensors.items():
        bad = first_non_finite(state)
        if bad is not None:
            raise SatSynthError(
                f"the {kind}'s {name} tensor {bad} holds NaN or infinite values: training "
                "diverged, so nothing was saved (check the dataset for NaN/inf pixels, or lower "
                "the learning rate)", path)
    cfg = {"kind": kind, "format_version": FORMAT_VERSION, "satsynth_version": __version__,
           **config}
    with atomic_dir(path) as tmp:
        for name, state in tensors.items():
            flat = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            save_file(flat, str(tmp / f"{name}.safetensors"))
            umask_mode(tmp / f"{name}.safetensors")  # safetensors creates 0600 files
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_json(tmp / "config.json", cfg)
    return path


def load_config(path: str | Path, kind: str) -> dict[str, Any]:
    """Read and check a model folder's config (right kind, readable version)."""
    path = Path(path)
    if not path.is_dir():
        raise SatSynthError("model folder not found", path)
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise SatSynthError("config.json is not a SatSynth model config", path / "config.json")
    if cfg["kind"] != kind:
        raise SatSynthError(f"this is a {cfg['kind']} model folder, a {kind} is needed", path)
    validate_model_config(cfg, path / "config.json")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise SatSynthError(
            f"model written by SatSynth {cfg.get('satsynth_version')} (format "
            f"{cfg.get('format_version')}); this SatSynth {__version__} reads format "
            f"{FORMAT_VERSION} or older: upgrade SatSynth", path)
    return cfg


#: Whole-number fields of model configs and their smallest valid value.
CONFIG_INTS = {"format_version": 0, "in_channels": 1, "bands": 1, "chip_size": 1,
               "source_chip_size": 1, "step": 0}


def validate_model_config(cfg: dict[str, Any], where: str | Path) -> None:
    """Check a model config against the schema every model kind shares (the contract's): the class
    table and the normalization as for class files and datasets, whole-number sizes. One-line
    errors."""
    try:
        for key, low in CONFIG_INTS.items():
            if cfg.get(key) is not None:
                strict_int(cfg[key], key, low)
        if "classes" in cfg:
            parse_class_table(cfg["classes"], where="classes")
        if "normalization" in cfg:
            parse_normalization(cfg["normalization"])
    except ContractError as exc:
        raise SatSynthError(f"not a valid model config: {exc}", where) from None


def load_tensors(path: str | Path, name: str = "model", device: str = "cpu") -> dict[str, Any]:
    """Load one tensor group, with a clear error when the file is missing or corrupt."""
    from safetensors.torch import load_file

    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise SatSynthError(f"weights file {f.name} is missing", Path(path))
    try:
        state = load_file(str(f), device=device)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise SatSynthError(f"weights file is corrupt or truncated ({exc})", f) from None
    bad = first_non_finite(state)
    if bad is not None:
        raise SatSynthError(f"tensor {bad} holds NaN or infinite values: these weights come from "
                            "a diverged training and are not used; train the model again", f)
    return state


def first_non_finite(state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding NaN or inf (None: all
    finite). A model with such weights is never saved nor loaded."""
    import torch

    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and \
                not bool(torch.isfinite(t).all()):
            return key
    return None


def check_finite_loss(loss: float, step: int, dataset: str | Path, lr: float) -> None:
    """Stop a training whose loss became NaN or infinite (its weights are lost), with one line
    naming the dataset and what to check. Called once per optimizer step."""
    if not math.isfinite(loss):
        raise SatSynthError(
            f"training stopped at step {step}: the loss is {loss} (not finite), the weights "
            "diverged and are not saved; check the dataset for NaN/inf "
            f"pixels (a float image's nodata) or lower the learning rate (now {lr:g})", dataset)


#: How :func:`model_fingerprint` identifies a model folder's weights. ``sha256``: SHA-256 of every
#: byte of the weights file (what ``synthesize`` writes as ``weights_sha256`` and an ONNX export
#: as ``satsynth_weights_sha256``). ``quick``: SHA-1 of the weights file's first MiB and its size
#: (the filtered pools' ``scored_by``: a retrained segmenter, never a bit flip, is what it
#: notices). ``files``: SHA-1 of ``config.json`` and of the name, size and modification second
#: of every ``*.safetensors`` (the experiment's ``generator_fingerprint``: what its synthetic
#: cache depends on, without reading the weights).
FINGERPRINTS = ("sha256", "quick", "files")


def model_fingerprint(folders: str | Path | Sequence[str | Path], how: str = "sha256",
                      weights: str = "model.safetensors", length: int | None = None) -> str:
    """The one fingerprint of model folders' weights.

    Args:
        folders: a model folder, or several whose fingerprints are one (a cascade's generator
            and upsampler).
        how: one of :data:`FINGERPRINTS`.
        weights: the weights file hashed by ``sha256`` and ``quick`` (``ema.safetensors`` for
            generators).
        length: keep this many leading hex digits (None: all).

    Returns:
        The hex digest; a missing file is one line naming the folder.
    """
    if how not in FINGERPRINTS:
        raise ValueError(f"unknown fingerprint {how!r}")
    folders = [folders] if isinstance(folders, (str, Path)) else folders
    h = hashlib.sha256() if how == "sha256" else hashlib.sha1()
    for folder in (Path(f) for f in folders):
        if how == "files":
            if not (folder / "config.json").is_file():
                raise SatSynthError("model folder not found (no config.json)", folder)
            h.update((folder / "config.json").read_bytes())
            for f in sorted(folder.glob("*.safetensors")):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
            continue
        f = folder / weights
        if not f.is_file():
            raise SatSynthError(f"weights file {weights} is missing", folder)
        with f.open("rb") as fh:
            if how == "quick":
                h.update(fh.read(1 << 20) + f"{f.stat().st_size}".encode())
                continue
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]
