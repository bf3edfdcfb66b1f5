"""TiO-Depth with a DINOv2 + DPT (Depth-Anything-V2) encoder, in JAX / Flax NNX."""

from tiodepth_jax import xla_flags

__version__ = "0.1.0"

xla_flags.apply_defaults()
