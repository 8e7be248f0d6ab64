"""Generator configuration: architecture presets, diffusion settings and the training recipe.

Everything a model folder needs to sample without the dataset lives in :class:`GeneratorConfig`
(saved as ``config.json``); :class:`GeneratorTrainOptions` holds the knobs of one training run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from satsynth.contract import (
    CONDITIONS,
    MIXED_PRECISIONS,
    PREDICTIONS,
    SNR_WEIGHTINGS,
    GeneratorTrainFields,
)
from satsynth.data.classes import ClassTable
from satsynth.data.model_config import ModelConfig
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError

#: UNet sizes. ``tiny``: CPU demos and tests (about 1 M parameters); ``small``: a laptop GPU;
#: ``base``: a GPU near the paper's scale at 128x128 chips.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"block_widths": [32, 64, 64], "layers_per_block": 1, "attention": False},
    "small": {"block_widths": [64, 128, 128, 256], "layers_per_block": 2, "attention": True},
    "base": {"block_widths": [128, 256, 256, 512], "layers_per_block": 2, "attention": True},
}
#: the contract's beta schedule names -> diffusers' names
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# SNR_WEIGHTINGS (contract): loss weights over noise levels, as weights on the clean-sample
# error: ``min-snr`` is min(SNR, gamma) (Hang et al. 2023); ``min-snr+1`` is min(SNR + 1, gamma),
# which keeps full weight at the highest noise levels, where a sample's overall class composition
# is decided (v-prediction only); ``auto`` is min-snr+1 for v-prediction and min-snr for epsilon.
# CONDITIONS (contract): what the UNet is conditioned on: ``none`` (the paper's unconditional
# model) or ``class-shares`` (each chip's class pixel shares, added to the timestep embedding; at
# sampling time drawn from the real training chips, or asked for by the user).


@dataclass(frozen=True)
class Recipe:
    """A named training recipe: the :class:`GeneratorTrainOptions` it sets (explicit options still win),
    the chip size it is defined for (None: any), and the sampler ``synthesize`` uses by default
    for a model trained with it."""

    options: dict[str, Any]
    sampler: str
    chip_size: int | None = None
    about: str = ""


#: ``default``: the product's recipe (the :class:`GeneratorTrainOptions` defaults, fastest to converge on
#: 2 CPU cores); ``paper``: SatSynth (CVPR 2024) as published: analog bits, epsilon prediction,
#: a linear beta schedule, no SNR loss weighting, no class conditioning, the base UNet, 128 x 128
#: chips, sampled with DDPM's 1000 steps.
RECIPES: dict[str, Recipe] = {
    "default": Recipe({}, "dpm", about="the product's recipe"),
    "paper": Recipe({"preset": "base", "encoding": "bits", "prediction": "epsilon",
                     "beta_schedule": "linear", "snr_gamma": None, "condition": "none"},
                    "ddpm", 128, about="SatSynth (CVPR 2024) as published"),
}


def check_recipe_size(recipe: str, size: int, where: Any = None) -> None:
    """Refuse to train ``recipe`` at a pair size it is not defined for (the paper's: 128 px)."""
    want = RECIPES[recipe].chip_size
    if want is not None and size != want:
        raise SatSynthError(
            f"--recipe {recipe} trains on {want} x {want} px chips as published, and these are "
            f"{size} px: prepare the dataset with --chip-size {want}, or train --recipe default",
            where)


def default_sampler(training: dict[str, Any]) -> str:
    """The sampler ``synthesize`` uses when none is asked for: the one of the recipe a model was
    trained with (``training`` is its config's ``training`` section; older models: default)."""
    return RECIPES.get(str(training.get("recipe") or "default"), RECIPES["default"]).sampler


@dataclass
class ArchConfig:
    """The UNet: widths of its resolution levels, residual blocks per level, attention."""

    block_widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention: bool = False

    @classmethod
    def preset(cls, name: str, block_widths: list[int] | None = None) -> ArchConfig:
        if name not in PRESETS:
            raise SatSynthError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
        arch = cls(**PRESETS[name])
        if block_widths:
            arch.block_widths = list(block_widths)
        arch.check()
        return arch

    def check(self) -> None:
        w = self.block_widths
        if not w or any(int(x) <= 0 or int(x) % 8 for x in w):
            raise SatSynthError(f"block widths must be positive multiples of 8, got {w}")


@dataclass
class DiffusionConfig:
    """Noise schedule and training target (a diffusers DDPMScheduler config)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"  # linear | cosine
    prediction_type: str = "v_prediction"  # epsilon | v_prediction

    def check(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise SatSynthError(f"unknown beta schedule {self.beta_schedule!r}: use linear or cosine")
        if self.prediction_type not in PREDICTIONS:
            raise SatSynthError(f"unknown prediction {self.prediction_type!r}: use "
                                "epsilon or v_prediction")

    def scheduler_kwargs(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": BETA_SCHEDULES[self.beta_schedule],
                "prediction_type": self.prediction_type}


class GeneratorTrainOptions(GeneratorTrainFields):
    """One training run, with the fields and defaults of
    :class:`satsynth.contract.GeneratorTrainFields` (the recipe that converged fastest on 2 CPU
    cores). ``recipe`` (:data:`RECIPES`) replaces some of them; options given explicitly win
    over the recipe."""

    @classmethod
    def from_kwargs(cls, **kw: Any) -> GeneratorTrainOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
        recipe = kw.get("recipe") or "default"
        if recipe not in RECIPES:
            raise SatSynthError(f"unknown recipe {recipe!r}: use {' or '.join(RECIPES)}")
        given = {k: v for k, v in kw.items() if v is not None or k in ("snr_gamma", "minutes")}
        opts = cls(**{**RECIPES[recipe].options, **given, "recipe": recipe})
        opts.check()
        return opts

    def check(self) -> None:
        if self.steps < 1:
            raise SatSynthError(f"--steps must be at least 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise SatSynthError(f"--minutes must be positive, got {self.minutes}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise SatSynthError("--batch-size and --grad-accum must be at least 1")
        if self.lr <= 0:
            raise SatSynthError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SatSynthError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise SatSynthError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            self.snr_gamma = None
        if self.snr_weighting not in SNR_WEIGHTINGS:
            raise SatSynthError(f"unknown SNR weighting {self.snr_weighting!r}: use "
                                f"{' or '.join(SNR_WEIGHTINGS)}")
        if self.snr_weighting == "auto":
            self.snr_weighting = "min-snr+1" if self.prediction == "v_prediction" else "min-snr"
        if self.snr_weighting == "min-snr+1" and self.prediction != "v_prediction":
            raise SatSynthError("--snr-weighting min-snr+1 needs --prediction v_prediction (with "
                                "epsilon its weight grows without bound at high noise)")
        if self.condition not in CONDITIONS:
            raise SatSynthError(f"unknown condition {self.condition!r}: use "
                                f"{' or '.join(CONDITIONS)}")
        if self.checkpoint_every < 1:
            raise SatSynthError("--checkpoint-every must be at least 1")
        if self.size is not None and self.size < 8:
            raise SatSynthError(f"--size must be at least 8 px, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GeneratorConfig(ModelConfig):
    """Everything needed to rebuild the generator and sample georeferenced pairs (config.json:
    :meth:`~satsynth.data.model_config.ModelConfig.to_dict`)."""

    KIND = "generator"

    arch: ArchConfig
    diffusion: DiffusionConfig
    encoding: str
    classes: ClassTable
    normalization: Normalizer
    bands: int
    dtype: str
    chip_size: int  # the model's pair size in px
    crs: str | None = None
    pixel_size: list[float] | None = None
    source_extent: list[float] | None = None  # minx, miny, maxx, maxy of the training chips
    y_up: bool = True  # chip transforms have negative e (north-up rasters)
    real_class_shares: list[float] = field(default_factory=list)
    condition: str = "none"  # none | class-shares (CONDITIONS)
    #: the training chips' size when the model works at a lower resolution (``--size``: chips
    #: area-downsampled, ``pixel_size`` scaled to match); None = the same as ``chip_size``
    source_chip_size: int | None = None
    dataset: str = ""
    model_id: str = ""
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def label_channels(self) -> int:
        from satsynth.generator.encoding import LabelEncoding

        return LabelEncoding(self.encoding, self.num_classes).channels

    @property
    def channels(self) -> int:
        return self.bands + self.label_channels

    @property
    def in_channels(self) -> int:
        """UNet input channels: the noisy pair (and, for an upsampler, its condition)."""
        return self.channels

    @classmethod
    def _objects_from_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {**super()._objects_from_dict(d), "arch": ArchConfig(**d["arch"]),
                "diffusion": DiffusionConfig(**d["diffusion"])}
