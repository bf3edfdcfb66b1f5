"""The TiO-Depth encoder: DINOv2 + the DPT pyramid of Depth-Anything-V2 (spec §2.3, §2.4, §4).

Returns the four `scratch.layer<k>_rn` maps (1/3.5, 1/7, 1/14, 1/28 of the input), each with the DPT
head's `features` channels. Unlike the fork (spec §11.2), every variant uses its own
Depth-Anything-V2 head widths, so any Depth-Anything-V2 checkpoint initialises it.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import DinoV2, Remat
from tiodepth_jax.models.dpt import DPTHead

# Input normalisation. 'fork': the original's (x - 0.45) / 0.225 on every channel (spec §2.4, §11.4);
# 'imagenet': the mean/std DINOv2 was trained with (the named fix).
NORMALISATIONS = {
    "fork": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class TiOEncoder(nnx.Module):
    """(B, H, W, 3) images in [0, 1], H and W multiples of 14 -> [E1, E2, E3, E4] (B, h_k, w_k, features)."""

    def __init__(self, cfg: DepthAnythingV2Config, *, normalisation: str = "fork", dtype=jnp.float32,
                 remat: Remat = False, rngs: nnx.Rngs):
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {normalisation!r}; known: {', '.join(NORMALISATIONS)}")
        self.cfg = cfg
        self.normalisation = normalisation
        self.pretrained = DinoV2(cfg.dinov2, dtype=dtype, remat=remat, rngs=rngs)
        self.depth_head = DPTHead(cfg.dpt, pyramid_only=True, dtype=dtype, rngs=rngs)

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return (self.cfg.dpt.features,) * 4

    def normalise(self, x):
        mean, std = NORMALISATIONS[self.normalisation]
        if self.normalisation == "fork":  # one scalar op pair, exactly as the original computes it
            return (x - mean[0]) / std[0]
        return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)

    def __call__(self, x):
        x = self.normalise(x)
        p = self.cfg.dinov2.patch_size
        tokens = [t for t, _ in self.pretrained(x, self.cfg.taps)]
        return self.depth_head.pyramid(tokens, (x.shape[1] // p, x.shape[2] // p))
