"""The DPT head of Depth-Anything-V2 (spec §4.3), in Flax NNX, NHWC.

Names mirror the PyTorch `DPTHead` (`projects.<k>`, `resize_layers.<k>`, `scratch.layer<k>_rn`,
`scratch.refinenet<k>`, `scratch.output_conv1`, `scratch.output_conv2.<0|2>`). The head is used two
ways: `__call__` is the full relative-depth head, `pyramid` returns the four `layer<k>_rn` maps that
the TiO-Depth encoder consumes (1/3.5, 1/7, 1/14 and 1/28 of the input).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.models.dinov2 import matmul_precision
from tiodepth_jax.ops.resize import interpolate_bilinear

PAD1 = ((1, 1), (1, 1))  # PyTorch's symmetric padding=1 (JAX 'SAME' is asymmetric for stride 2)


@dataclasses.dataclass(frozen=True)
class DPTConfig:
    in_channels: int
    features: int
    out_channels: tuple[int, int, int, int]

    def __post_init__(self):
        if len(self.out_channels) != 4:
            raise ValueError(f"DPTConfig.out_channels needs 4 entries, got {self.out_channels}")


def conv(cin, cout, k, *, dtype, rngs, stride=1, padding=0, use_bias=True):
    pad = ((padding, padding), (padding, padding))
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=pad, use_bias=use_bias,
                    dtype=dtype, precision=matmul_precision(dtype), rngs=rngs)


class Identity(nnx.Module):
    def __call__(self, x):
        return x


class ReLU(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class PatchConvTranspose(nnx.Module):
    """ConvTranspose2d with kernel == stride (non-overlapping blocks): (B, h, w, I) -> (B, s*h, s*w, O).

    out[s*y + a, s*x + b, o] = bias[o] + sum_c kernel[a, b, c, o] * in[y, x, c]; kernel is PyTorch's
    (in, out, kh, kw) weight transposed to (kh, kw, in, out), with no flip.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs):
        bound = 1.0 / (cout * stride * stride) ** 0.5
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (stride, stride, cin, cout), jnp.float32,
                                                   -bound, bound))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x):
        b, h, w, _ = x.shape
        s = self.stride
        k = self.kernel[...].astype(self.dtype)
        y = jnp.einsum("nyxc,abco->nyaxbo", x.astype(self.dtype), k, precision=matmul_precision(self.dtype))
        return y.reshape(b, h * s, w * s, -1) + self.bias[...].astype(self.dtype)


class ResidualConvUnit(nnx.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias (use_bn False)."""

    def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = conv(features, features, 3, padding=1, dtype=dtype, rngs=rngs)
        self.conv2 = conv(features, features, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class FeatureFusionBlock(nnx.Module):
    """Refinenet: [x0 + rcu1(skip)] -> rcu2 -> bilinear resize (align_corners True) -> 1x1 out_conv."""

    def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
        self.resConfUnit1 = ResidualConvUnit(features, dtype=dtype, rngs=rngs)
        self.resConfUnit2 = ResidualConvUnit(features, dtype=dtype, rngs=rngs)
        self.out_conv = conv(features, features, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x, skip=None, *, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:  # PyTorch: scale_factor=2
            size = (2 * x.shape[1], 2 * x.shape[2])
        x = interpolate_bilinear(x, size=size, align_corners=True)
        return self.out_conv(x)


class Scratch(nnx.Module):
    """`layer<k>_rn` 3x3 convs to `features` channels; unless `pyramid_only`, the fusion and output layers."""

    def __init__(self, cfg: DPTConfig, *, pyramid_only: bool, dtype, rngs: nnx.Rngs):
        f = cfg.features
        oc = cfg.out_channels
        self.layer1_rn = conv(oc[0], f, 3, padding=1, use_bias=False, dtype=dtype, rngs=rngs)
        self.layer2_rn = conv(oc[1], f, 3, padding=1, use_bias=False, dtype=dtype, rngs=rngs)
        self.layer3_rn = conv(oc[2], f, 3, padding=1, use_bias=False, dtype=dtype, rngs=rngs)
        self.layer4_rn = conv(oc[3], f, 3, padding=1, use_bias=False, dtype=dtype, rngs=rngs)
        if pyramid_only:
            return
        self.refinenet1 = FeatureFusionBlock(f, dtype=dtype, rngs=rngs)
        self.refinenet2 = FeatureFusionBlock(f, dtype=dtype, rngs=rngs)
        self.refinenet3 = FeatureFusionBlock(f, dtype=dtype, rngs=rngs)
        self.refinenet4 = FeatureFusionBlock(f, dtype=dtype, rngs=rngs)
        self.output_conv1 = conv(f, f // 2, 3, padding=1, dtype=dtype, rngs=rngs)
        self.output_conv2 = nnx.List([
            conv(f // 2, 32, 3, padding=1, dtype=dtype, rngs=rngs),
            ReLU(),
            conv(32, 1, 1, dtype=dtype, rngs=rngs),
        ])


class DPTHead(nnx.Module):
    """Depth-Anything-V2 DPT head (use_bn False, use_clstoken False).

    `pyramid_only` builds just what `pyramid` needs (the TiO-Depth encoder): no refinenets, no output convs.
    """

    def __init__(self, cfg: DPTConfig, *, pyramid_only: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        oc = cfg.out_channels
        self.dtype = dtype
        self.projects = nnx.List([conv(cfg.in_channels, c, 1, dtype=dtype, rngs=rngs) for c in oc])
        self.resize_layers = nnx.List([
            PatchConvTranspose(oc[0], oc[0], 4, dtype=dtype, rngs=rngs),
            PatchConvTranspose(oc[1], oc[1], 2, dtype=dtype, rngs=rngs),
            Identity(),
            conv(oc[3], oc[3], 3, stride=2, padding=1, dtype=dtype, rngs=rngs),
        ])
        self.scratch = Scratch(cfg, pyramid_only=pyramid_only, dtype=dtype, rngs=rngs)

    def stages(self, tokens, grid_hw: tuple[int, int]):
        """Per-tap `projects` and `resize_layers` outputs: tokens (B, gh*gw, D) -> maps at 4g, 2g, g, ceil(g/2)."""
        gh, gw = grid_hw
        projected, resized = [], []
        for k, t in enumerate(tokens):
            x = t.reshape(t.shape[0], gh, gw, t.shape[-1]).astype(self.dtype)  # (B, gh, gw, D)
            x = self.projects[k](x)
            projected.append(x)
            resized.append(self.resize_layers[k](x))
        return projected, resized

    def pyramid(self, tokens, grid_hw: tuple[int, int]):
        """The four `scratch.layer<k>_rn` maps (B, ., ., features), finest first."""
        _, resized = self.stages(tokens, grid_hw)
        s = self.scratch
        return [s.layer1_rn(resized[0]), s.layer2_rn(resized[1]), s.layer3_rn(resized[2]), s.layer4_rn(resized[3])]

    def stage_outputs(self, tokens, grid_hw: tuple[int, int]) -> dict:
        """Every stage output, keyed by its PyTorch module name; "scratch.output_conv2.2" is the
        relative depth before its final ReLU, (B, 14*gh, 14*gw, 1). Unused entries cost nothing under jit."""
        projected, resized = self.stages(tokens, grid_hw)
        s = self.scratch
        out = {f"projects.{k}": projected[k] for k in range(4)}
        out.update({f"resize_layers.{k}": resized[k] for k in range(4)})
        l1, l2, l3, l4 = (s.layer1_rn(resized[0]), s.layer2_rn(resized[1]),
                          s.layer3_rn(resized[2]), s.layer4_rn(resized[3]))
        p4 = s.refinenet4(l4, size=l3.shape[1:3])
        p3 = s.refinenet3(p4, l3, size=l2.shape[1:3])
        p2 = s.refinenet2(p3, l2, size=l1.shape[1:3])
        p1 = s.refinenet1(p2, l1)
        out1 = s.output_conv1(p1)
        gh, gw = grid_hw
        hidden = s.output_conv2[0](interpolate_bilinear(out1, size=(14 * gh, 14 * gw), align_corners=True))
        out.update({
            "scratch.layer1_rn": l1, "scratch.layer2_rn": l2, "scratch.layer3_rn": l3, "scratch.layer4_rn": l4,
            "scratch.refinenet4": p4, "scratch.refinenet3": p3, "scratch.refinenet2": p2, "scratch.refinenet1": p1,
            "scratch.output_conv1": out1, "scratch.output_conv2.0": hidden,
            "scratch.output_conv2.2": s.output_conv2[2](s.output_conv2[1](hidden)),
        })
        return out

    def __call__(self, tokens, grid_hw: tuple[int, int]):
        """Relative depth (B, 14*gh, 14*gw, 1) before the last ReLU."""
        return self.stage_outputs(tokens, grid_hw)["scratch.output_conv2.2"]
