"""Presets for the dock: one set of stage settings per kind of machine and ambition.

The values fill the dock's *Advanced* section; whatever the user then changes there is what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class StageSettings:
    """The knobs the dock exposes (its Advanced section), one field per widget."""

    chip_size: int = 64
    stride: int = 64
    val_fraction: float = 0.2
    recipe: str = "default"  # the generator's: default, or paper (SatSynth as published)
    generator_size: str = "tiny"
    generator_steps: int = 300
    batch_size: int = 8
    synth_count: int = 32
    sampler: str = "ddim"
    sampler_steps: int = 25
    upsampler: str = ""  # Synthesize: an upsampler folder (the cascade); '' = none
    arch: str = "fpn"
    encoder: str = "resnet18"
    encoder_weights: str = ""  # a local weights file for the segmenter's encoder ('' = random)
    pretrained: str = "none"  # none, imagenet, torchgeo (the segmenter's encoder; not with a file)
    torchgeo_weights: str = ""  # with pretrained = torchgeo: TorchGeo's weights name
    epochs: int = 5
    synthetic_ratio: float = 0.5
    mixed_precision: str = "auto"  # auto (bf16/fp16 where the device has it), no, fp16, bf16
    experiment_ratios: str = "0,0.5,1"  # Experiment: synthetic pairs per real pair to compare
    experiment_seeds: int = 2
    experiment_budget: str = "steps"
    real_fraction: float = 1.0  # Experiment: share of the real training chips used
    device: str = "auto"
    tile: int = 512
    overlap: int = 64
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StageSettings:
        """Build from saved settings, ignoring unknown keys and keeping types."""
        base = cls()
        if not isinstance(data, dict):
            return base
        values = {}
        for f in fields(cls):
            if f.name in data:
                default = getattr(base, f.name)
                try:
                    values[f.name] = type(default)(data[f.name])
                except (TypeError, ValueError):
                    continue
        return replace(base, **values)


PRESETS: dict[str, StageSettings] = {
    # Minutes on a laptop CPU: tiny generator, few steps, a light segmenter.
    "Quick on CPU": StageSettings(
        chip_size=64, stride=64, val_fraction=0.2, generator_size="tiny", generator_steps=300,
        batch_size=8, synth_count=32, sampler="ddim", sampler_steps=25, arch="fpn",
        encoder="resnet18", epochs=5, synthetic_ratio=0.5, experiment_ratios="0,0.5,1",
        experiment_seeds=2, device="cpu", tile=512, overlap=32),
    # An hour or so on one GPU (or a long night on a CPU).
    "Standard": StageSettings(
        chip_size=128, stride=96, val_fraction=0.2, generator_size="small", generator_steps=5000,
        batch_size=16, synth_count=500, sampler="ddim", sampler_steps=50, arch="unet",
        encoder="resnet34", epochs=30, synthetic_ratio=0.5, experiment_ratios="0,0.5,1,2",
        experiment_seeds=3, device="auto", tile=1024, overlap=64),
    # The paper's recipe (train-generator --recipe paper: the base UNet on 128 px chips, analog
    # bits, epsilon, linear schedule, unconditional; DDPM sampling) and its FPN segmenter: needs a
    # CUDA GPU with >= 16 GB and a day of training.
    "Paper-scale on GPU": StageSettings(
        chip_size=128, stride=128, val_fraction=0.1, recipe="paper", generator_size="base",
        generator_steps=100000, batch_size=32, synth_count=5000, sampler="ddpm",
        sampler_steps=1000, arch="fpn", encoder="resnet50", pretrained="imagenet", epochs=80,
        synthetic_ratio=1.0,
        mixed_precision="bf16", experiment_ratios="0,1,2,3,5", experiment_seeds=3,
        device="cuda", tile=1024, overlap=128),
}
DEFAULT_PRESET = "Quick on CPU"


def preset(name: str) -> StageSettings:
    """The named preset (the default one for unknown names)."""
    return PRESETS.get(name, PRESETS[DEFAULT_PRESET])
