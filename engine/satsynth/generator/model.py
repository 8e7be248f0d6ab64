"""Building the joint image-mask UNet and its diffusers schedulers; loading a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from satsynth.checkpoint import load_config, load_tensors
from satsynth.contract import SAMPLERS
from satsynth.errors import SatSynthError
from satsynth.generator.config import GeneratorConfig


def build_unet(cfg: GeneratorConfig) -> Any:
    """A diffusers ``UNet2DModel`` over image bands + label channels (input = output channels).

    With ``condition == "class-shares"`` it takes ``class_labels``: a chip's K class pixel shares,
    mapped by diffusers' ``TimestepEmbedding`` MLP and added to the timestep embedding."""
    from diffusers import UNet2DModel
    from diffusers.models.embeddings import TimestepEmbedding

    widths = [int(w) for w in cfg.arch.block_widths]
    levels = len(widths)
    if cfg.chip_size % (2 ** (levels - 1)):
        raise SatSynthError(f"chip size {cfg.chip_size} is not divisible by {2 ** (levels - 1)}, "
                            f"which {levels} UNet levels need: use fewer block widths or "
                            "another chip size")
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.arch.attention and levels > 1:
        for i in range(max(1, levels - 2), levels):  # the two coarsest levels
            down[i] = "AttnDownBlock2D"
            up[levels - 1 - i] = "AttnUpBlock2D"
    groups = max(1, min(32, min(widths) // 4))
    conditioned = cfg.condition == "class-shares"
    unet = UNet2DModel(
        sample_size=cfg.chip_size, in_channels=cfg.in_channels, out_channels=cfg.channels,
        block_out_channels=tuple(widths), layers_per_block=int(cfg.arch.layers_per_block),
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=groups,
        attention_head_dim=8, class_embed_type="identity" if conditioned else None)
    if conditioned:  # "identity" passes class_labels through as an embedding; make it learned
        unet.class_embedding = TimestepEmbedding(cfg.num_classes, widths[0] * 4)
    return unet


def noise_scheduler(cfg: GeneratorConfig) -> Any:
    """The training noise schedule (diffusers ``DDPMScheduler``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**cfg.diffusion.scheduler_kwargs())


def sampler_scheduler(cfg: GeneratorConfig, sampler: str) -> Any:
    """A sampling scheduler sharing the training schedule: ddpm (all steps), ddim or dpm
    (DPM-Solver++ multistep)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    # every channel (image and label) lives in [-1, 1]: the predicted clean sample is clipped to
    # that range at each step, which keeps short-trained epsilon models from diverging
    kw = cfg.diffusion.scheduler_kwargs()
    if sampler == "ddpm":
        return DDPMScheduler(**kw, clip_sample=True, clip_sample_range=1.0)
    if sampler == "ddim":
        return DDIMScheduler(**kw, clip_sample=True, clip_sample_range=1.0,
                             timestep_spacing="trailing")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                           thresholding=True, sample_max_value=1.0,
                                           timestep_spacing="trailing")
    raise SatSynthError(f"unknown sampler {sampler!r}: use {', '.join(SAMPLERS)}")


def load_generator(path: str | Path, device: Any = "cpu", weights: str = "ema",
                   kind: str = "generator", config_type: type[GeneratorConfig] = GeneratorConfig
                   ) -> tuple[Any, GeneratorConfig]:
    """Load a generator folder (config.json + ``weights``.safetensors) in eval mode; ``kind`` and
    ``config_type`` load the other models of the cascade (an ``upsampler``)."""
    path = Path(path)
    cfg = config_type.from_dict(load_config(path, kind), path / "config.json")
    model = build_unet(cfg)
    state = load_tensors(path, weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SatSynthError(f"{weights}.safetensors does not match config.json "
                            f"({str(exc).splitlines()[0]})", path) from None
    return model.to(device).eval(), cfg


def load_conditions(path: str | Path) -> Any:
    """The training chips' class shares (N, K) kept in a class-share-conditioned model folder."""
    shares = load_tensors(path, "conditions").get("class_shares")
    if shares is None or shares.ndim != 2 or not len(shares):
        raise SatSynthError("conditions.safetensors holds no class shares", Path(path))
    return shares.numpy()
