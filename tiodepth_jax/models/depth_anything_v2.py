"""Depth-Anything-V2: DINOv2 trunk + DPT head, relative depth (spec §4), in Flax NNX.

`DepthAnythingV2Config.preset("vits" | "vitb" | "vitl" | "vitg")` gives the released models
(Depth-Anything-V2 `run.py`); any other width, depth, heads or tap list is a plain config.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax import schema
from tiodepth_jax.models.dinov2 import DinoV2, DinoV2Config, Remat
from tiodepth_jax.models.dpt import DPTConfig, DPTHead

# variant: (embed_dim, depth, heads, ffn, taps, DPT features, DPT out_channels)
_PRESETS = {
    "vits": (384, 12, 6, "mlp", (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": (768, 12, 12, "mlp", (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": (1024, 24, 16, "mlp", (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "vitg": (1536, 40, 24, "swiglu", (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536)),
}
VARIANTS = tuple(_PRESETS)


@dataclasses.dataclass(frozen=True)
class DepthAnythingV2Config:
    dinov2: DinoV2Config
    dpt: DPTConfig
    taps: tuple[int, ...]
    variant: str = "custom"

    def __post_init__(self):
        if len(self.taps) != 4:
            raise ValueError(f"the DPT head needs 4 tapped blocks, got taps={self.taps}")
        if any(not 0 <= t < self.dinov2.depth for t in self.taps):
            raise ValueError(f"taps {self.taps} must lie in [0, {self.dinov2.depth}) for a {self.dinov2.depth}-block trunk")
        if self.dpt.in_channels != self.dinov2.embed_dim:
            raise ValueError(f"DPT in_channels {self.dpt.in_channels} != DINOv2 embed_dim {self.dinov2.embed_dim}")

    @classmethod
    def preset(cls, variant: str, *, depth: int | None = None, taps: tuple[int, ...] | None = None):
        """A released variant; `depth`/`taps` build a reduced-depth trunk with the same widths."""
        if variant not in _PRESETS:
            raise ValueError(f"unknown Depth-Anything-V2 variant {variant!r}; known: {', '.join(VARIANTS)}")
        dim, n_blocks, heads, ffn, preset_taps, features, out_channels = _PRESETS[variant]
        return cls(
            dinov2=DinoV2Config(embed_dim=dim, depth=depth or n_blocks, num_heads=heads, ffn=ffn),
            dpt=DPTConfig(in_channels=dim, features=features, out_channels=out_channels),
            taps=tuple(taps) if taps is not None else preset_taps,
            variant=variant,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DepthAnythingV2Config":
        """The config `to_dict` wrote; a bad key raises a `schema.ConfigError` (a ValueError) naming it."""
        return schema.from_dict(cls, d, "Depth-Anything-V2 model config")


class DepthAnythingV2(nnx.Module):
    """Relative (inverse) depth from an ImageNet-normalised image.

    `__call__`: (B, H, W, 3), H and W multiples of 14 -> (B, H, W) non-negative relative depth.
    """

    def __init__(self, cfg: DepthAnythingV2Config, *, dtype=jnp.float32, remat: Remat = False,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.pretrained = DinoV2(cfg.dinov2, dtype=dtype, remat=remat, rngs=rngs)
        self.depth_head = DPTHead(cfg.dpt, dtype=dtype, rngs=rngs)

    def intermediate_layers(self, x):
        """[(patch tokens (B, h*w, D), class token (B, D))] for the 4 taps, after the final LayerNorm."""
        return self.pretrained(x, self.cfg.taps)

    def grid(self, x) -> tuple[int, int]:
        p = self.cfg.dinov2.patch_size
        return x.shape[1] // p, x.shape[2] // p

    def stage_outputs(self, x) -> dict:
        """The DPT head's stage outputs (see `DPTHead.stage_outputs`) plus "depth" (B, H, W)."""
        tokens = [t for t, _ in self.intermediate_layers(x)]
        out = self.depth_head.stage_outputs(tokens, self.grid(x))
        out["depth"] = jax.nn.relu(out["scratch.output_conv2.2"])[..., 0].astype(jnp.float32)
        return out

    def __call__(self, x):
        tokens = [t for t, _ in self.intermediate_layers(x)]
        return jax.nn.relu(self.depth_head(tokens, self.grid(x)))[..., 0].astype(jnp.float32)
