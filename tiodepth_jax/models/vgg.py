"""VGG19 perceptual features of the TiO-Depth mono loss (spec §2.6.1), in Flax NNX, NHWC.

TiO-Depth's `Feat_Net` is `torchvision.models.vgg19().features[0:19]` cut into three consecutive
slices; each slice ends in a 2x2 stride-2 max-pool (floor: 63 -> 31) and its output is one feature map:

| slice | torchvision `features.<n>` | layers                                          | output          |
|-------|----------------------------|-------------------------------------------------|-----------------|
| 1     | 0-4                        | conv1_1 (0), relu, conv1_2 (2), relu, pool (4)  | 64 ch at 1/2    |
| 2     | 5-9                        | conv2_1 (5), relu, conv2_2 (7), relu, pool (9)  | 128 ch at 1/4   |
| 3     | 10-18                      | conv3_1 (10), relu, conv3_2 (12), relu,         | 256 ch at 1/8   |
|       |                            | conv3_3 (14), relu, conv3_4 (16), relu, pool 18 |                 |

The conv attributes are named `conv<stage>_<k>`; `TORCHVISION_INDEX` maps them to the torchvision
index (`conv3_2` <-> `features.12`). All convs are 3x3, zero padding 1, with bias. The input is used
as is (no ImageNet normalisation, as in the original).

The parameters are meant to stay frozen (the original never optimises them; keep them out of the
optimizer), but gradients flow through the network into its input image.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax import schema
from tiodepth_jax.models.dinov2 import matmul_precision

# (attribute, torchvision features index, in channels, out channels, slice) in forward order.
LAYERS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv1_1", 0, 3, 64, 0),
    ("conv1_2", 2, 64, 64, 0),
    ("conv2_1", 5, 64, 128, 1),
    ("conv2_2", 7, 128, 128, 1),
    ("conv3_1", 10, 128, 256, 2),
    ("conv3_2", 12, 256, 256, 2),
    ("conv3_3", 14, 256, 256, 2),
    ("conv3_4", 16, 256, 256, 2),
)
TORCHVISION_INDEX = {name: idx for name, idx, *_ in LAYERS}
SLICE_END = (5, 10, 19)  # slice k is torchvision features[SLICE_END[k-1]:SLICE_END[k]] (0 before slice 0)
MAX_SLICES = len(SLICE_END)
PAD1 = ((1, 1), (1, 1))


@dataclasses.dataclass(frozen=True)
class VGG19Config:
    """`n_slices` (1-3): how many of the three feature slices are built and returned."""

    n_slices: int = 3

    def __post_init__(self):
        if not 1 <= self.n_slices <= MAX_SLICES:
            raise ValueError(f"VGG19Config.n_slices must be in [1, {MAX_SLICES}], got {self.n_slices}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VGG19Config":
        """The config `to_dict` wrote; a bad key raises a `schema.ConfigError` (a ValueError) naming it."""
        return schema.from_dict(cls, d, "VGG19 features config")

    @property
    def layers(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """The `LAYERS` rows this config builds."""
        return tuple(row for row in LAYERS if row[4] < self.n_slices)


def max_pool_2x2(x):
    """MaxPool2d(2, 2) on NHWC, floor mode (an odd trailing row/column is dropped)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class VGG19Features(nnx.Module):
    """(B, H, W, 3) -> [(B, H//2, W//2, 64), (B, H//4, W//4, 128), (B, H//8, W//8, 256)] (first n_slices).

    `remat` is accepted for `tiodepth_jax.checkpoint.load_model` and has no effect.
    """

    def __init__(self, cfg: VGG19Config = VGG19Config(), *, dtype=jnp.float32, remat=False,
                 rngs: nnx.Rngs):
        del remat
        self.cfg = cfg
        self.dtype = dtype
        for name, _, cin, cout, _ in cfg.layers:
            setattr(self, name, nnx.Conv(cin, cout, (3, 3), padding=PAD1, use_bias=True, dtype=dtype,
                                         precision=matmul_precision(dtype), rngs=rngs))

    def __call__(self, x) -> list[jax.Array]:
        x = x.astype(self.dtype)
        feats = []
        for k in range(self.cfg.n_slices):
            for name, *_, s in LAYERS:
                if s == k:
                    x = jax.nn.relu(getattr(self, name)(x))
            x = max_pool_2x2(x)
            feats.append(x)
        return feats
