"""The super-resolution stage of the cascade (the paper's G_SR): ``satsynth train-upsampler``.

An upsampler is a joint image-mask diffusion model like the base generator, at ``factor`` times
the base generator's size, whose UNet also sees the low-resolution pair: the noisy
high-resolution pair concatenated (channels) with the low-resolution pair (image bands and label
code) upsampled bilinearly. It is trained on real chips: the target is the chip (area-downsampled
to ``base_size * factor`` when the chips are larger), the condition the same chip area-downsampled
to ``base_size`` (the majority class for the mask), so that a base generator trained with
``train-generator --size base_size`` on the same chips and an upsampler cover the same ground.

``synthesize GENERATOR --upsampler UPSAMPLER`` samples low-resolution pairs from the base, then
each pair's high-resolution version from the upsampler, with the same sampler and steps
(:func:`satsynth.generator.sample.upsample_pairs`).

Conditioning augmentation (``train-upsampler --cond-noise SIGMA``, off by default): the upsampler
is trained on real low-resolution inputs but fed the base generator's synthetic ones, which
carry more colour noise; as cascades do (Ho et al. 2021), training then adds Gaussian noise of a
level drawn per chip from U(0, SIGMA) to the low-resolution image (model space, [-1, 1]), so the
upsampler learns not to copy noise from its input. Sampling feeds the base's pairs as they are.

The upsampler is conditioned on the low-resolution pair only, not on class shares: the
low-resolution mask already fixes each chip's class mix (the paper's G_SR is conditioned the same
way); class-share requests (``--favor``) act through the base generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np

from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError
from satsynth.generator.config import GeneratorConfig, GeneratorTrainOptions
from satsynth.generator.encoding import LabelEncoding

KIND = "upsampler"
FACTORS = (2, 4)


@dataclass
class UpsamplerConfig(GeneratorConfig):
    """A generator config (``chip_size`` = the output size) plus the low-resolution input size."""

    base_size: int = 0
    cond_noise: float = 0.0  # conditioning augmentation: noise levels U(0, cond_noise) in training

    @property
    def factor(self) -> int:
        return self.chip_size // max(self.base_size, 1)

    def to_dict(self) -> dict[str, Any]:
        """config.json's form; ``cond_noise`` only where it was used (older folders' layout)."""
        d = super().to_dict()
        if not self.cond_noise:
            d.pop("cond_noise")
        return d

    @property
    def in_channels(self) -> int:
        """The noisy high-resolution pair and the upsampled low-resolution pair."""
        return 2 * self.channels


def condition_input(cfg: UpsamplerConfig, images: Any, labels: Any) -> Any:
    """The upsampler's extra input: (N,C,b,b) model-space images in [-1,1] and (N,b,b) class
    indices at ``base_size`` -> (N, channels, S, S), encoded and upsampled bilinearly."""
    import torch

    from satsynth.generator.resample import upsample_condition

    enc = LabelEncoding(cfg.encoding, cfg.num_classes)
    images = torch.as_tensor(images, dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels)).long()
    pair = torch.cat([images, enc.encode(labels.to(images.device))], 1)
    return upsample_condition(pair, cfg.chip_size)


def training_inputs(cfg: UpsamplerConfig, image: Any, mask: Any, generator: Any = None
                    ) -> tuple[Any, Any, Any]:
    """Real chips -> (target images, target masks at the output size, condition input)."""
    from satsynth.generator.resample import downsample_pair

    k = cfg.num_classes
    img, lab = downsample_pair(image, mask, cfg.chip_size, k)
    low_img, low_lab = downsample_pair(image, mask, cfg.base_size, k)
    low_img = augment_condition(low_img, cfg.cond_noise, generator)
    return img, lab, condition_input(cfg, low_img, low_lab)


def augment_condition(low_img: Any, max_sigma: float, generator: Any = None) -> Any:
    """Conditioning augmentation: ``low_img`` (N,C,b,b, model space, on the CPU) plus Gaussian
    noise of a level drawn per chip from U(0, ``max_sigma``) (from ``generator``), clipped to
    [-1, 1]; unchanged when 0."""
    import torch

    if not max_sigma:
        return low_img
    sigma = torch.rand(low_img.shape[0], 1, 1, 1, generator=generator) * float(max_sigma)
    noise = torch.randn(low_img.shape, generator=generator, dtype=low_img.dtype)
    return (low_img + sigma.to(low_img.dtype) * noise).clamp(-1, 1)


def _stage(base_size: int, factor: int, cond_noise: float = 0.0) -> Any:
    from satsynth.generator.resample import check_factor
    from satsynth.generator.train import TrainStage, new_config

    def make_config(store: ChipStore, opts: GeneratorTrainOptions) -> UpsamplerConfig:
        check_factor(store.meta.chip_size, base_size * factor,
                     f"--base-size {base_size} x --factor {factor} =")
        cfg = new_config(store, opts)
        kw = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        kw["model_id"] = "sr-" + cfg.model_id.removeprefix("gen-")
        return UpsamplerConfig(**kw, base_size=base_size, cond_noise=float(cond_noise))

    return TrainStage(kind=KIND, task="train-upsampler", config_type=UpsamplerConfig,
                      new_config=make_config, inputs=training_inputs)


def run_upsampler_training(dataset: str | Path, out: str | Path, base_size: int, factor: int,
                           cond_noise: float = 0.0, **options: Any) -> dict[str, Any]:
    """Train (or with ``resume=True`` continue) an upsampler from ``base_size`` px pairs to
    ``base_size * factor`` px on a chip store; ``options`` are :class:`GeneratorTrainOptions` fields
    (``size`` and ``condition`` are set by the stage); ``cond_noise``: the largest noise level of
    the conditioning augmentation (0: none). Returns the outputs of
    :func:`~satsynth.generator.train.run_training`."""
    from satsynth.generator.train import run_training

    if factor not in FACTORS:
        raise SatSynthError(f"--factor must be {' or '.join(map(str, FACTORS))}, got {factor}")
    if base_size < 8:
        raise SatSynthError(f"--base-size must be at least 8 px, got {base_size}")
    if not 0 <= cond_noise <= 1:
        raise SatSynthError(f"--cond-noise must be a noise level in [0, 1], got {cond_noise}")
    for key in ("size", "condition"):
        if options.pop(key, None) is not None:
            raise SatSynthError(f"an upsampler sets {key} itself (from --base-size and --factor; "
                                "it is conditioned on the low-resolution pair)")
    if options.get("resume") and (Path(out) / "config.json").is_file():
        from satsynth.checkpoint import load_config

        prev = UpsamplerConfig.from_dict(load_config(out, KIND), Path(out) / "config.json")
        if (prev.base_size, prev.factor) != (base_size, factor):
            raise SatSynthError(f"--resume: this upsampler goes from {prev.base_size} px by "
                                f"{prev.factor}x, not from {base_size} px by {factor}x", out)
    return run_training(dataset, out, stage=_stage(base_size, factor, cond_noise),
                        size=base_size * factor, condition="none", **options)


def load_upsampler(path: str | Path, device: Any = "cpu", weights: str = "ema"
                   ) -> tuple[Any, UpsamplerConfig]:
    """Load an upsampler folder in eval mode."""
    from satsynth.generator.model import load_generator

    model, cfg = load_generator(path, device, weights, kind=KIND, config_type=UpsamplerConfig)
    return model, cast(UpsamplerConfig, cfg)


def check_cascade(base: GeneratorConfig, up: UpsamplerConfig, where: Path) -> None:
    """A clear error when a base generator's pairs cannot feed an upsampler."""
    problems = []
    if base.chip_size != up.base_size:
        problems.append(f"the upsampler takes {up.base_size} px pairs, the generator makes "
                        f"{base.chip_size} px pairs (train the generator with --size "
                        f"{up.base_size})")
    if base.bands != up.bands:
        problems.append(f"the generator has {base.bands} bands, the upsampler {up.bands}")
    if base.classes.ids != up.classes.ids:
        problems.append(f"the class tables differ (generator ids {base.classes.ids})")
    if (base.crs or None) != (up.crs or None):
        problems.append(f"the generator's CRS ({base.crs}) is not the upsampler's ({up.crs})")
    if problems:
        raise SatSynthError("this upsampler does not fit the generator: " + "; ".join(problems),
                            where)
