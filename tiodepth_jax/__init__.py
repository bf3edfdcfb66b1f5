"""TiO-Depth with a DINOv2 + DPT (Depth-Anything-V2) encoder, in JAX / Flax NNX."""

__version__ = "0.1.0"
