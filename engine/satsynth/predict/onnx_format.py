"""What an ONNX export of a segmenter is: its input and output names, operator set and weights
key, and how to open one with ONNX Runtime (:mod:`~satsynth.predict.export` writes them,
:mod:`~satsynth.predict.onnx_runtime` runs them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.errors import SatSynthError

#: ONNX operator set of the exported graphs (ONNX Runtime >= 1.12 and Deepness run it).
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
#: Metadata key holding the SHA-256 of the weights the graph was exported from.
DIGEST_KEY = "satsynth_weights_sha256"


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 of a segmenter folder's ``model.safetensors`` (what an export is keyed by)."""
    from satsynth.checkpoint import model_fingerprint

    return model_fingerprint(model_dir, "sha256")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported graph, each value decoded from JSON."""
    ort = import_onnxruntime("reading an exported model")
    try:
        sess = open_session(ort, path)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        raise SatSynthError(f"not a readable ONNX model ({first_line(exc)})", path) from None
    return {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries' messages run long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else exc.__class__.__name__


def import_onnxruntime(purpose: str) -> Any:
    """``onnxruntime``, or one clear line saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise SatSynthError(f"{purpose} needs the onnxruntime package, which is not installed "
                            "in the engine's environment: pip install onnxruntime") from None
    return onnxruntime


#: ONNX Runtime session attributes set on top of its defaults (none: without its CPU memory
#: arena a 4096^2 prediction saved 40-65 MiB but cost 5-8 % more CPU time, and resident memory
#: crept up with the raster's length; benchmarks/bench_predict_memory.py varies them).
SESSION_OPTIONS: dict[str, Any] = {}
#: Session config entries set on top of the wait policy (none; the benchmark varies them).
SESSION_CONFIG: dict[str, str] = {}
#: The entry that makes ONNX Runtime's intra-op threads spin ("1") or sleep ("0") while they wait.
SPINNING = "session.intra_op.allow_spinning"


def open_session(ort: Any, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)
                 ) -> Any:
    """An ONNX Runtime session of an exported graph on ``providers``, with torch's thread count
    and wait policy (threads sleep where OpenMP's do: :func:`satsynth.threads.waits_sleep`),
    :data:`SESSION_OPTIONS` and errors-only logging (warnings would reach the plugin's log as
    noise)."""
    import torch

    from satsynth.threads import waits_sleep

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    for key, value in SESSION_OPTIONS.items():
        setattr(opts, key, value)
    config = {SPINNING: "0" if waits_sleep() else "1", **SESSION_CONFIG}
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=list(providers))


def run_session(sess: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K, H, W)`` of normalized tiles ``x`` ``(N, C, H, W)`` through an
    exported graph's session."""
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
