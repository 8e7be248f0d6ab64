"""``satsynth export``: a trained segmenter as an ONNX graph that ONNX Runtime, Deepness and other
tools load, with the project's metadata and the keys Deepness reads.

The graph takes tiles normalized as ``satsynth predict`` normalizes them (``Normalizer.to_model``:
``(N, C, H, W)`` float32, [-1, 1]; values outside are clipped inside the graph) and returns class
probabilities ``(N, K, H, W)`` (softmax over the class *indices* 0..K-1). The batch axis is
dynamic; height and width are fixed to the tile size, because Deepness takes its tile size from
the input shape. Every file is checked against the PyTorch model on random input before it is
kept, and written atomically.

Deepness (PUTvision/qgis-plugin-deepness, ``processing/models/model_base.py``) reads each
metadata value with ``json.loads``: ``model_type`` (str), ``class_names`` ({index: name}, keys
consecutive from 0), ``resolution`` (float, cm/px), ``tile_size`` (int; its documentation calls it
``tiles_size``: both are written), ``tiles_overlap`` (int, percent of the tile), ``seg_thresh``
(float; 0 turns its probability threshold off, so it takes the argmax as we do) and
``standardization_mean`` / ``standardization_std`` (per-band lists, applied after it divides
8-bit values by 255), which reproduce our normalization exactly, and ``seg_small_segment`` (0:
its small-segment median filter off, as SatSynth predicts). A model trained from pretrained
weights standardizes its input as they expect inside the graph
(``satsynth_input_standardization``), so the graph's input is the same for every model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import __version__
from satsynth.contract import EXPORT_FORMATS, PredictFields
from satsynth.errors import SatSynthError
from satsynth.io import atomic_path
from satsynth.predict.onnx_format import (
    DIGEST_KEY,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    first_line,
    import_onnxruntime,
    open_session,
    run_session,
    weights_digest,
)

log = logging.getLogger("satsynth")

#: Largest difference allowed between the ONNX and PyTorch class probabilities on random input.
TOLERANCE = 1e-3


def onnx_metadata(cfg: Any, tile_h: int, tile_w: int, overlap: int, digest: str
                  ) -> dict[str, str]:
    """The metadata an exported graph carries, every value JSON-encoded (as Deepness reads it)."""
    from satsynth.predict.source import model_resolution

    table, norm = cfg.classes, cfg.normalization
    low, high = np.asarray(norm.low, float), np.asarray(norm.high, float)
    high = np.maximum(high, low + 1e-6)  # as Normalizer does
    meta: dict[str, Any] = {
        # the keys Deepness reads
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(table.classes)},
        "tile_size": tile_w,
        "tiles_size": tile_w,
        "tiles_overlap": math.ceil(100 * overlap / tile_w),
        "seg_thresh": 0.0,
        # Deepness's small-segment filter (a median filter of this size, 9 px by default) is
        # off: SatSynth's models are trained and evaluated without a post-filter
        "seg_small_segment": 0,
        # Deepness divides 8-bit values by 255, then (x - mean) / std: our [-1, 1] scaling
        "standardization_mean": [float(v) for v in (low + high) / 510.0],
        "standardization_std": [float(v) for v in (high - low) / 510.0],
        # SatSynth's own
        "satsynth_version": __version__,
        "satsynth_arch": cfg.arch,
        "satsynth_encoder": cfg.encoder,
        "satsynth_classes": table.to_dict(),
        "satsynth_normalization": norm.to_dict(),
        "satsynth_bands": cfg.in_channels,
        "satsynth_pixel_size": cfg.pixel_size,
        "satsynth_crs": cfg.crs,
        "satsynth_tile": [tile_h, tile_w],
        "satsynth_overlap": overlap,
        "satsynth_input": "Normalizer.to_model: (value - low) / (high - low) * 2 - 1, "
                          "clipped to [-1, 1]",
        # what pretrained encoder weights expect, applied inside the graph to its input x:
        # ((x + 1) / 2 - mean) / std per band (null: none)
        "satsynth_input_standardization": getattr(cfg, "input_standardization", None),
        "satsynth_output": "softmax class probabilities over the class indices 0..K-1",
        DIGEST_KEY: digest,
    }
    res = model_resolution(cfg.crs, cfg.pixel_size, None, None, 0, 0)
    if res is not None:  # metres -> cm/px (a model trained in degrees has none without an image)
        meta["resolution"] = round(100.0 * (res[0] + res[1]) / 2, 6)
    return {k: json.dumps(v) for k, v in meta.items()}


def _deployed(model: Any) -> Any:
    """The segmenter as it is exported: clip the normalized input, then softmax its logits."""
    import torch

    class Deployed(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.net(x.clamp(-1.0, 1.0)), dim=1)

    return Deployed(model).eval()


def _export_graph(module: Any, example: Any, path: Path) -> str:
    """Write the ONNX graph of ``module``; returns the exporter used.

    The TorchScript exporter (``dynamo=False``) is tried first: it needs no more than ``onnx`` and
    takes seconds. torch.export (``dynamo=True``, through onnxscript) takes every architecture the
    project trains (PSPNet's adaptive pooling included), but a minute or more on a CPU; it is
    used when the first fails (or when a later torch drops the TorchScript exporter)."""
    import torch

    errors = []
    for dynamo in (False, True):
        out = io.StringIO()
        try:
            # the exporters print progress lines on stdout, which carries the JSON protocol
            with warnings.catch_warnings(), contextlib.redirect_stdout(out):
                warnings.simplefilter("ignore")
                if dynamo:
                    batch = torch.export.Dim("batch", min=1)
                    torch.onnx.export(module, (example,), str(path), dynamo=True,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_shapes=({0: batch},), opset_version=18,
                                      verbose=False)
                else:
                    torch.onnx.export(module, (example,), str(path), dynamo=False,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes={INPUT_NAME: {0: "batch"},
                                                    OUTPUT_NAME: {0: "batch"}},
                                      opset_version=OPSET, do_constant_folding=True)
            return "torch.export (dynamo)" if dynamo else "TorchScript"
        except Exception as exc:  # noqa: BLE001 - the exporters raise many types
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'}: {first_line(exc)}")
            log.debug("ONNX export with dynamo=%s failed: %s", dynamo, exc)
        finally:
            if out.getvalue():
                print(out.getvalue(), end="", file=sys.stderr)
    raise SatSynthError("cannot export this model to ONNX (" + "; ".join(errors) + ")")


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.doc_string = "SatSynth segmenter: normalized tiles in, class probabilities out"
    onnx.save(model, str(path))


def _check_against_torch(module: Any, path: Path, shape: tuple[int, int, int, int],
                         device: Any, sess: Any = None) -> float:
    """Largest probability difference between ONNX Runtime (CPU) and PyTorch on random input of
    ``shape`` (another batch size than the export's example, so the batch axis is checked);
    ``sess``: the graph's session where the caller has one open (no second copy in memory)."""
    import torch

    if sess is None:
        sess = open_session(import_onnxruntime("checking an exported model"), path)
    x = np.random.default_rng(0).uniform(-1.05, 1.05, size=shape).astype(np.float32)
    got = run_session(sess, x)
    with torch.inference_mode():
        want = module(torch.from_numpy(x).to(device)).float().cpu().numpy()
    if got.shape != want.shape:
        raise SatSynthError(f"the exported ONNX graph returned {got.shape} for {want.shape}")
    return float(np.abs(got - want).max())


def matches_model(model: Any, path: str | Path, bands: int, tile_h: int, tile_w: int,
                  session: Any = None) -> bool:
    """Whether the graph in ``path`` gives ``model``'s class probabilities (within
    :data:`TOLERANCE`) on random input: how a cached export is checked before it is used, since
    its metadata alone says nothing about the graph and weights it holds.

    Args:
        model: the loaded segmenter.
        path: the exported graph.
        bands: the model's input bands.
        tile_h: the graph's tile height.
        tile_w: the graph's tile width.
        session: an ONNX Runtime session of ``path`` the caller already has open (checked
            instead of opening a second one, which would double the graph's memory).

    Returns:
        True when the graph runs on such tiles and agrees with the model.
    """
    import torch

    device = next(iter(model.parameters())).device
    try:
        with torch.inference_mode(False), torch.no_grad():
            diff = _check_against_torch(_deployed(model), Path(path),
                                        (1, bands, tile_h, tile_w), device, session)
    except Exception as exc:  # noqa: BLE001 - another graph may fail in many ways on this input
        log.debug("%s does not run on %d x %d tiles: %s", path, tile_w, tile_h, exc)
        return False
    return diff <= TOLERANCE


def write_onnx(model: Any, cfg: Any, path: str | Path, tile_h: int, tile_w: int, *,
               overlap: int, digest: str) -> dict[str, Any]:
    """Export ``model`` (a loaded segmenter, in eval mode) for ``tile_h x tile_w`` tiles to
    ``path`` with its metadata; kept only when ONNX Runtime and PyTorch agree within
    :data:`TOLERANCE`. Returns the exporter used and the largest difference."""
    import torch

    import_onnxruntime("exporting to ONNX")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SatSynthError("exporting to ONNX needs the onnx package, which is not installed "
                            "in the engine's environment: pip install onnx") from None
    path = Path(path)
    device = next(iter(model.parameters())).device
    module = _deployed(model)
    example = torch.zeros(1, cfg.in_channels, tile_h, tile_w, device=device)
    with atomic_path(path) as tmp, torch.inference_mode(False), torch.no_grad():
        exporter = _export_graph(module, example, tmp)
        _add_metadata(tmp, onnx_metadata(cfg, tile_h, tile_w, overlap, digest))
        diff = _check_against_torch(module, tmp, (2, cfg.in_channels, tile_h, tile_w), device)
        if not diff <= TOLERANCE:
            raise SatSynthError(f"the exported graph differs from the PyTorch model by {diff:.2g} "
                                f"in class probability (allowed {TOLERANCE:g}); nothing was "
                                "written", path)
    log.info("exported %s/%s to %s (%s exporter, %d x %d tiles, largest probability "
             "difference %.1e)", cfg.arch, cfg.encoder, path, exporter, tile_w, tile_h, diff)
    return {"exporter": exporter, "max_difference": diff}


def export_segmenter(model_dir: str | Path, out: str | Path, *, fmt: str = "onnx",
                     tile: int | None = None, overlap: int | None = None) -> dict[str, Any]:
    """``satsynth export``: write the segmenter in ``model_dir`` as an ONNX file ``out`` for
    ``tile x tile`` tiles (default: predict's), any batch size. Returns the outputs."""
    from satsynth.outputs import check_output
    from satsynth.predict.windows import check_tiling
    from satsynth.segmenter.model import input_multiple, load_segmenter

    if fmt not in EXPORT_FORMATS:
        raise SatSynthError(f"--format {fmt}: choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise SatSynthError("the model is written as ONNX: use a .onnx name", out)
    check_output(out, "file", inputs=[model_dir])
    tile = PredictFields.tile if tile is None else tile
    overlap = PredictFields.overlap if overlap is None else overlap
    model, cfg = load_segmenter(model_dir, "cpu")
    digest = weights_digest(model_dir)
    check_tiling(tile, overlap, 1, input_multiple(model), cfg.arch)
    info = write_onnx(model, cfg, out, tile, tile, overlap=overlap, digest=digest)
    return {"model": str(out), "format": fmt, "tile": tile, "overlap": overlap, **info}
