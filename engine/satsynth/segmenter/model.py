"""Segmenter configuration and construction (segmentation-models-pytorch)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satsynth.checkpoint import load_config, load_tensors
from satsynth.contract import ARCHITECTURES, TINY_ARCH, TINY_ENCODER, tiny_encoder
from satsynth.data.classes import ClassTable
from satsynth.data.model_config import ModelConfig
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError

#: The segmentation_models_pytorch class of each architecture but the tiny net (``TINY_ARCH``: no
#: downsampling, for tests and quick CPU runs; its ``encoder`` reads "w<width>d<depth>", e.g.
#: "w16d2": two 3x3 conv layers of 16 channels, then a 1x1 head).
SMP_CLASSES = {
    "unet": "Unet",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
    "pspnet": "PSPNet",
    "segformer": "Segformer",
}


@dataclass
class SegmenterConfig(ModelConfig):
    """Everything needed to rebuild a trained segmenter and apply it to new rasters
    (config.json: :meth:`~satsynth.data.model_config.ModelConfig.to_dict`)."""

    KIND = "segmenter"

    arch: str = "fpn"
    encoder: str = "resnet18"
    in_channels: int = 3
    classes: ClassTable = field(kw_only=True)
    normalization: Normalizer = field(kw_only=True)
    chip_size: int = 128
    crs: str | None = None
    pixel_size: list[float] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    #: what pretrained encoder weights expect, applied by the model to its normalized input
    #: ({"weights", "mean", "std"} on 0..1: :mod:`satsynth.segmenter.weights`); None: no
    #: standardization (random or file weights, and every model folder older than this field)
    input_standardization: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """config.json's form; ``input_standardization`` only where there is one (so a model
        from random weights writes the same file as before the field existed)."""
        d = super().to_dict()
        if d.get("input_standardization") is None:
            d.pop("input_standardization", None)
        return d


def build_segmenter(cfg: SegmenterConfig, encoder_weights: str | None = None) -> Any:
    """Build the smp model. ``encoder_weights`` (``--encoder-weights``) is a local
    safetensors/state file, a name smp knows for the encoder (``imagenet``, ...) or
    ``torchgeo:NAME`` (:mod:`satsynth.segmenter.weights`: from their caches, downloaded once);
    named weights set ``cfg.input_standardization``, which the model then applies to its input."""
    import segmentation_models_pytorch as smp

    from satsynth.segmenter.weights import (
        apply_input_standardization,
        load_named_weights,
        parse_weights,
    )

    arch = cfg.arch.lower()
    spec = parse_weights(encoder_weights, cfg.encoder)
    if arch == TINY_ARCH:
        if spec is not None and spec.kind != "file":
            raise SatSynthError(f"the {TINY_ARCH} architecture has no pretrained weights "
                                f"({spec.label}); choose an smp architecture")
        tiny = _build_tiny(cfg)
        apply_input_standardization(tiny, cfg.input_standardization)
        return tiny
    if arch not in SMP_CLASSES:
        raise SatSynthError(f"unknown architecture {cfg.arch!r}; choose from {', '.join(ARCHITECTURES)}")
    cls = getattr(smp, SMP_CLASSES[arch])
    kwargs: dict[str, Any] = {"encoder_name": cfg.encoder, "encoder_weights": None,
                              "in_channels": cfg.in_channels, "classes": cfg.num_classes}
    if arch == "pspnet":
        kwargs["upsampling"] = 8  # encoder_depth 3 works at 1/8: this gives input resolution
    try:
        model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - smp raises KeyError/ValueError for bad combos
        raise SatSynthError(f"cannot build {cfg.arch} with encoder {cfg.encoder!r}: {exc}") from None
    if spec is not None and spec.kind == "file":
        _load_encoder_weights(model, Path(spec.name))
    elif spec is not None:
        cfg.input_standardization = load_named_weights(model, spec, cfg.encoder,
                                                       cfg.in_channels)
    apply_input_standardization(model, cfg.input_standardization)
    return model


def _build_tiny(cfg: SegmenterConfig) -> Any:
    from torch import nn

    shape = tiny_encoder(cfg.encoder)
    if shape is None:
        raise SatSynthError(f"the {TINY_ARCH} architecture takes an encoder like '{TINY_ENCODER}' "
                            f"(width 16, 2 layers), got {cfg.encoder!r}")
    width, depth = shape
    layers: list[Any] = []
    ch = cfg.in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
    layers.append(nn.Conv2d(ch, cfg.num_classes, 1))
    return nn.Sequential(*layers)


def _load_encoder_weights(model: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise SatSynthError("encoder weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols first
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch/safetensors raise many types; never echo them:
        # torch's message advises turning the safe loader off, which a user must not do
        raise SatSynthError(
            "cannot read encoder weights: not a tensor file SatSynth can load safely (a "
            "pickled object or a damaged file); give a .safetensors file or a .pth holding only "
            "a state dict of tensors", path) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise SatSynthError("the encoder weights file holds no state dict of tensors", path)
    try:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: one line per tensor
        raise SatSynthError(f"encoder weights do not fit this encoder "
                            f"({str(exc).splitlines()[-1].strip()[:160]})", path) from None
    if len(missing) == len(list(model.encoder.state_dict())):
        raise SatSynthError("no encoder weight matched this encoder (wrong file or encoder?)", path)


def input_multiple(model: Any) -> int:
    """Every side of a segmenter's input must be a multiple of this: its encoder's downsampling
    (32 for most smp encoders), 1 for the tiny net, which does not downsample."""
    enc = getattr(model, "encoder", None)
    return int(getattr(enc, "output_stride", 32) or 32) if enc is not None else 1


def check_chip_size(model: Any, chip_size: int, arch: str, encoder: str) -> None:
    """A clear error when chips of ``chip_size`` px do not fit the model's downsampling."""
    stride = input_multiple(model)
    if chip_size % stride:
        raise SatSynthError(f"{arch} with {encoder} needs chips whose size is a multiple of "
                            f"{stride} px, these are {chip_size} px (prepare with --chip-size "
                            f"{max(stride, chip_size // stride * stride)})")


def forward_logits(model: Any, x: Any) -> Any:
    """Model logits at the input resolution."""
    import torch.nn.functional as F  # noqa: N812

    out = model(x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def load_segmenter_config(path: str | Path) -> SegmenterConfig:
    """The configuration of a trained segmenter folder (its config.json)."""
    return SegmenterConfig.from_dict(load_config(path, "segmenter"), Path(path) / "config.json")


def load_segmenter(path: str | Path, device: Any = "cpu") -> tuple[Any, SegmenterConfig]:
    """Load a trained segmenter folder (config.json + model.safetensors), in eval mode."""
    cfg = load_segmenter_config(path)
    model = build_segmenter(cfg)
    state = load_tensors(path, "model")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SatSynthError(f"weights do not match the config ({str(exc).splitlines()[0]})",
                            path) from None
    return model.to(device).eval(), cfg
