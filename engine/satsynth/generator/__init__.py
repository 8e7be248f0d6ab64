"""The generator stage: a joint image-mask diffusion model (train-generator, synthesize)."""
