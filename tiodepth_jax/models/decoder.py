"""The dual-path decoder of TiO-Depth (`DPDecoder`, spec §3), in Flax NNX, NHWC.

One decoder serves the monocular path (SDFA skip fusion, optionally with the distilled "midout"
offset branch) and the stereo path (both views in lockstep, with a Monocular Feature Matching block
at scales 3, 2 and 1). Scale i = 0 is the finest; the encoder pyramid is [E1, E2, E3, E4].

Attribute names follow the original `convblocks` keys: ("dec", i, j) -> `dec{i}_{j}`,
("dec-sdfa", i, j) -> `sdfa{i}_{j}`, ("out", 0) -> `out`, ("sfg", i, 0) -> `mfm{i}`,
("midout", i) -> `midout{i}`, ("midout-out", 0) -> `midout_out`. `torch_index_names` gives the
PyTorch `_convs.<idx>` order.

BatchNorm exists only in the Offset branches and follows PyTorch: batch statistics (biased variance)
in training, running statistics updated with momentum 0.1 and the unbiased variance (spec §12.3).
Every call takes `train` explicitly; the two views of the stereo path are separate calls, so each
updates the running statistics once, s before o, as in the original.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.models.dinov2 import matmul_precision
from tiodepth_jax.ops.resize import interpolate_nearest, pad_hw
from tiodepth_jax.ops.warp import grid_sample, identity_grid

DECODER_NAME = "StereoDecV9-3-2-1_3_2_1*MFM*FinalBranch*SDFARaw"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    enc_channels: tuple[int, int, int, int]          # C_E, finest first
    channels: tuple[int, int, int, int] = (64, 128, 256, 256)  # D, scale 0..3
    sfg_scales: tuple[int, ...] = (3, 2, 1)          # scales with an MFM block
    db_scales: tuple[int, ...] = (3, 2, 1)           # scales with a distilled (midout) offset branch
    n_bins: int = 49
    norm_disp_range: tuple[float, ...] = ()          # bin disparities / training width, for the MFM
    train_width: int = 840                           # image_size[1]: the MFM's rel_scale reference

    def __post_init__(self):
        if len(self.enc_channels) != 4 or len(self.channels) != 4:
            raise ValueError(f"the decoder needs 4 encoder and 4 decoder widths, got {self.enc_channels}, "
                             f"{self.channels}")
        if len(self.norm_disp_range) != self.n_bins:
            raise ValueError(f"norm_disp_range has {len(self.norm_disp_range)} entries, expected {self.n_bins}")
        for i in self.sfg_scales:
            if self.channels[i] < 16:
                raise ValueError(f"decoder channels {self.channels}: scale {i} has an MFM block, whose SE layer "
                                 f"needs at least 16 channels (reduction 16)")
        for s in self.sfg_scales + self.db_scales:
            if not 1 <= s <= 3:
                raise ValueError(f"MFM and midout scales must be in 1..3 (scales with a skip), got {s}")


def parse_decoder_name(name: str) -> dict:
    """The `decoder_name` grammar (spec §3.1) -> {'sfg_scales', 'db_scales'}.

    Only the configuration of the published models is implemented (MFM blocks, SDFA skip fusion,
    SDFA midout offsets, a separate midout-out head); any other flag is an error naming it.
    """
    scales = lambda tokens: tuple(int(t) if len(t) == 1 else int(t[0]) for t in tokens)  # noqa: E731
    unsupported = [f for f in ("Attn", "CVGCat", "DeformConv", "WoOutL") if f in name]
    if unsupported or "SDFARaw" not in name:
        raise ValueError(f"decoder_name {name!r}: only MFM + SDFARaw + FinalBranch decoders are implemented "
                         f"(unsupported: {unsupported or ['missing SDFARaw']})")
    return {"sfg_scales": scales(name.split("-")[1:]), "db_scales": scales(name.split("_")[1:])}


class Conv3x3(nnx.Module):
    """ReflectionPad2d(1) + 3x3 conv (stride 1, no padding)."""

    def __init__(self, cin: int, cout: int, *, use_bias: bool = True, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="VALID", use_bias=use_bias, dtype=dtype,
                             precision=matmul_precision(dtype), rngs=rngs)

    def __call__(self, x):
        return self.conv(pad_hw(x, "reflect"))


class ConvBlock(nnx.Module):
    """Conv3x3 (with bias) -> ELU."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.conv = Conv3x3(cin, cout, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return jax.nn.elu(self.conv(x))


class BatchNorm2d(nnx.Module):
    """PyTorch BatchNorm2d: eps 1e-5, momentum 0.1, unbiased variance in the running update."""

    def __init__(self, c: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((c,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((c,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.momentum = momentum
        self.eps = eps

    def __call__(self, x, *, train: bool):
        if train:
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))  # biased, for normalising
            n = x.shape[0] * x.shape[1] * x.shape[2]
            m = self.momentum
            batch_mean, batch_var = jax.lax.stop_gradient((mean, var * (n / max(n - 1, 1))))
            # set_value, not `v[...] = `: on a tracer the latter asks for its sharding, whose error message
            # walks the whole trace so far (seconds per training-step trace)
            self.mean.set_value((1 - m) * self.mean[...] + m * batch_mean)
            self.var.set_value((1 - m) * self.var[...] + m * batch_var)
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        else:
            mean, var = self.mean[...], self.var[...]
        inv = jax.lax.rsqrt(var + self.eps)
        return ((x - mean) * inv * self.scale[...] + self.bias[...]).astype(x.dtype)


class Offset(nnx.Module):
    """SDFA offset predictor: 1x1 conv (2C -> C, no bias) -> BN -> ELU -> Conv3x3 (C -> 2, no bias).

    Output channel 0 is the x offset and channel 1 the y offset, in pixels of the feature map. The
    last conv starts at zero (offsets start at 0), as in the original.
    """

    def __init__(self, c: int, *, dtype, rngs: nnx.Rngs):
        self.reduce = nnx.Conv(2 * c, c, (1, 1), use_bias=False, dtype=dtype, precision=matmul_precision(dtype),
                               rngs=rngs)
        self.bn = BatchNorm2d(c)
        self.offset = Conv3x3(c, 2, use_bias=False, dtype=dtype, rngs=rngs)
        self.offset.conv.kernel[...] = jnp.zeros_like(self.offset.conv.kernel[...])

    def __call__(self, x, *, train: bool):
        return self.offset(jax.nn.elu(self.bn(self.reduce(x), train=train)))


def offset_warp(x, delta):
    """Sample x at (col + delta_x, row + delta_y): grid_sample, bilinear, zeros padding, align_corners True.

    The grid is linspace(-1, 1) plus delta / ((size - 1) / 2), computed as the original does.
    x: (B, h, w, C), delta: (B, h, w, 2) -> (B, h, w, C).
    """
    h, w = x.shape[1:3]
    norm = jnp.asarray([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32)
    grid = identity_grid(h, w, align_corners=True)[None] + delta.astype(jnp.float32) / norm
    return grid_sample(x, grid, padding_mode="zeros", align_corners=True)


class SELayer(nnx.Module):
    """Squeeze-and-excitation, reduction 16: x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, c: int, *, dtype, rngs: nnx.Rngs, reduction: int = 16):
        # the Linear layers hold the weights (the original's names); __call__ applies them with _tiny_dense
        self.fc1 = nnx.Linear(c, c // reduction, use_bias=False, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(c // reduction, c, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2))  # (B, C)
        s = jax.nn.sigmoid(_tiny_dense(jax.nn.relu(_tiny_dense(s, self.fc1.kernel[...])), self.fc2.kernel[...]))
        return x * s[:, None, None, :]


def _tiny_dense(x, kernel):
    """x @ kernel for the SE layer's (B, C) x (C, C') products, as a broadcast product summed over C.

    Written as a dot, the weight gradient is a dot contracting the batch axis, which XLA:CPU emits as a fully
    unrolled loop kernel (336 kB of LLVM IR for 256 x 16): the epoch-31 training step lowered and compiled in
    3 s less this way (36.9 against 39.9 s, median of 3 alternated, 2-core CPU) at the same iteration time.
    """
    return jnp.sum(x[:, :, None] * kernel.astype(x.dtype), axis=1)


class MFM(nnx.Module):
    """Monocular Feature Matching block (`CA_Block_V2`, spec §3.2).

    A 49-bin correlation cost between the target features and the source features shifted by each
    bin's disparity (border padding), softmaxed over bins and fused back into the target features.
    """

    def __init__(self, c: int, cfg: DecoderConfig, *, dtype, rngs: nnx.Rngs):
        p = self.precision = matmul_precision(dtype)
        self.q_conv = nnx.Conv(c, c // 4, (1, 1), dtype=dtype, precision=p, rngs=rngs)
        self.k_conv = nnx.Conv(c, c // 4, (1, 1), dtype=dtype, precision=p, rngs=rngs)
        self.redu_conv = Conv3x3(c + cfg.n_bins, c, dtype=dtype, rngs=rngs)
        self.se = SELayer(c, dtype=dtype, rngs=rngs)
        self.norm_disp_range = cfg.norm_disp_range
        self.train_width = cfg.train_width

    def __call__(self, target, source, directs, image_width: int):
        """target, source: (B, h, w, C); directs: (B,) of +-1 -> (fused (B, h, w, C), raw cost (B, h, w, N))."""
        q = self.q_conv(target)
        k = self.k_conv(source)
        warped = self.warped_keys(k, directs, image_width)  # (N, B, h, w, C/4)
        # A contraction straight into (B, h, w, N): XLA:CPU (jax 0.10.2) miscompiles the equivalent
        # sum(q * warped, -1) followed by a transpose under jit when `warped` comes from gathers.
        cost = jnp.einsum("bhwc,nbhwc->bhwn", q, warped, precision=self.precision) / (q.shape[-1] ** 0.5)
        p = jax.nn.softmax(cost.astype(jnp.float32), axis=-1).astype(target.dtype)  # float32 softmax over the bins
        x = self.redu_conv(jnp.concatenate([target, p], axis=-1))
        return jax.nn.elu(self.se(x)), cost

    def warped_keys(self, k, directs, image_width: int):
        """k shifted by every bin: grid x = x_n + dir * norm_disp_j * 2 * rel_scale (spec §3.2, §11.18)."""
        h, w = k.shape[1:3]
        rel = self.train_width / image_width if image_width != self.train_width else 1
        shifts = jnp.asarray([d * 2 * rel for d in self.norm_disp_range], jnp.float32)  # (N,)
        base = identity_grid(h, w, align_corners=True)  # (h, w, 2)
        dirs = directs.astype(jnp.float32)[:, None, None]  # (B, 1, 1)

        def warp_bin(shift):
            gx = shift * dirs + base[None, ..., 0]  # (B, h, w)
            gy = jnp.broadcast_to(base[None, ..., 1], gx.shape)
            # concatenate, not jnp.stack: jax 0.10's `stack` primitive has no ONNX lowering in jax2onnx 0.12
            grid = jnp.concatenate([gx[..., None], gy[..., None]], axis=-1)
            return grid_sample(k, grid, padding_mode="border", align_corners=True)

        return jax.vmap(warp_bin)(shifts)


class DPDecoder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        ce, d = cfg.enc_channels, cfg.channels
        kw = dict(dtype=dtype, rngs=rngs)
        for i in (3, 2, 1, 0):
            cin = ce[3] if i == 3 else d[i + 1]
            setattr(self, f"dec{i}_0", ConvBlock(cin, d[i], **kw))
            if i >= 1:  # scale with an encoder skip (E_i)
                setattr(self, f"sdfa{i}_0", ConvBlock(ce[i - 1], d[i], **kw))
                setattr(self, f"sdfa{i}_1", Offset(d[i], **kw))
                setattr(self, f"sdfa{i}_2", Offset(d[i], **kw))
            setattr(self, f"dec{i}_1", ConvBlock(d[i], d[i], **kw))
        self.out = Conv3x3(d[0], cfg.n_bins, **kw)
        for i in (3, 2, 1, 0):
            if i in cfg.sfg_scales:
                setattr(self, f"mfm{i}", MFM(d[i], cfg, **kw))
        for i in (3, 2, 1, 0):
            if i in cfg.db_scales:
                setattr(self, f"midout{i}", Offset(d[i], **kw))
        self.midout_out = Conv3x3(d[0], cfg.n_bins, **kw)

    @staticmethod
    def torch_index_names(cfg: DecoderConfig) -> list[str]:
        """Attribute names in the order of the PyTorch `_convs` ModuleList (spec §3.3)."""
        names = []
        for i in (3, 2, 1, 0):
            names.append(f"dec{i}_0")
            if i >= 1:
                names += [f"sdfa{i}_0", f"sdfa{i}_1", f"sdfa{i}_2"]
            names.append(f"dec{i}_1")
        names.append("out")
        names += [f"mfm{i}" for i in (3, 2, 1, 0) if i in cfg.sfg_scales]
        names += [f"midout{i}" for i in (3, 2, 1, 0) if i in cfg.db_scales]
        names.append("midout_out")
        return names

    def _skip_fusion(self, i, x, skip, *, train, with_mo, deltas):
        """SDFA: align the upsampled decoder features and the encoder skip with predicted offsets."""
        enc = getattr(self, f"sdfa{i}_0")(skip)
        both = jnp.concatenate([x, enc], axis=-1)
        delta1 = getattr(self, f"sdfa{i}_1")(both, train=train)
        if with_mo and i in self.cfg.db_scales:
            delta2, key = getattr(self, f"midout{i}")(both, train=train), f"delta_{i}-3"
        else:
            delta2, key = getattr(self, f"sdfa{i}_2")(both, train=train), f"delta_{i}-2"
        deltas[f"delta_{i}-1"] = jax.lax.stop_gradient(delta1)
        deltas[key] = jax.lax.stop_gradient(delta2)
        return offset_warp(x, delta1) + offset_warp(enc, delta2)

    def mono(self, feats, image_hw: tuple[int, int], *, train: bool, with_mo: bool = False):
        """Monocular forward (spec §3.4.1).

        feats: [E1, E2, E3, E4] (B, h_k, w_k, C_E). Returns (logits (B, H, W, N), mid logits or None,
        offsets {'delta_{i}-{1|2|3}': (B, h_i, w_i, 2)}, detached).
        """
        x, deltas = feats[3], {}
        for i in (3, 2, 1, 0):
            x = getattr(self, f"dec{i}_0")(x)
            x = interpolate_nearest(x, size=feats[i - 1].shape[1:3] if i >= 1 else image_hw)
            if i >= 1:
                x = self._skip_fusion(i, x, feats[i - 1], train=train, with_mo=with_mo, deltas=deltas)
            x = getattr(self, f"dec{i}_1")(x)
        mid = self.midout_out(x) if with_mo else None
        return self.out(x), mid, deltas

    def stereo(self, feats_s, feats_o, directs, image_hw: tuple[int, int], *, train: bool):
        """Stereo forward (spec §3.4.2) on both views with shared weights.

        directs: (B,) the direction for target s (o uses -directs). Returns (logits_s, logits_o
        (B, H, W, N), raw MFM costs {'{i}-s', '{i}-o': (B, h_i, w_i, N)}).
        """
        xs, xo, costs = feats_s[3], feats_o[3], {}
        for i in (3, 2, 1, 0):
            block = getattr(self, f"dec{i}_0")
            xs, xo = block(xs), block(xo)
            size = feats_s[i - 1].shape[1:3] if i >= 1 else image_hw
            xs, xo = interpolate_nearest(xs, size=size), interpolate_nearest(xo, size=size)
            if i >= 1:
                xs = self._skip_fusion(i, xs, feats_s[i - 1], train=train, with_mo=False, deltas={})
                xo = self._skip_fusion(i, xo, feats_o[i - 1], train=train, with_mo=False, deltas={})
            block = getattr(self, f"dec{i}_1")
            xs, xo = block(xs), block(xo)
            if i in self.cfg.sfg_scales:
                mfm = getattr(self, f"mfm{i}")
                new_s, costs[f"{i}-s"] = mfm(xs, xo, directs, image_hw[1])
                new_o, costs[f"{i}-o"] = mfm(xo, xs, -directs, image_hw[1])
                xs, xo = new_s, new_o
        return self.out(xs), self.out(xo), costs
