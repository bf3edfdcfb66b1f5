"""TiO-Depth: one network, three paths (Mono, Stereo, Refine), spec §2.

Images are NHWC in [0, 1]. Every path returns a dict of named outputs using the original's names
(`mono_dvolume_0_s`, `stereo_depth_0_o`, `cost_3-s`, `refmono_delta_2-3_s`, ...), with (B, H, W, N)
volumes and (B, H, W, 1) maps, plus "depth" and "disp" for the path's final prediction (the
original's ('depth', 's') / ('disp', 's')). `train` selects batch statistics in the decoder's
BatchNorm and updates its running statistics.

Stop-gradient points (spec §12.4): `*_wog` features, `*_pvolume_*` (but not `*_pvolume_wg_*`), the
whole encoder + mono-decoder work of the Stereo path, and the decoder's offset outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax import schema
from tiodepth_jax.models.decoder import DECODER_NAME, DecoderConfig, DPDecoder, parse_decoder_name
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import Remat
from tiodepth_jax.models.encoder import TiOEncoder
from tiodepth_jax.ops.geometry import disparity_bins, disparity_bins_float64

PATHS = ("Mono", "Stereo", "Refine")


@dataclasses.dataclass(frozen=True)
class TiODepthConfig:
    """The network's settings (spec §1.1, §2.1); the defaults are the fork's DINOv2-B model."""

    variant: str = "vitb"                       # DINOv2 / Depth-Anything-V2 variant of the encoder
    encoder_depth: int | None = None            # a reduced-depth trunk (tests); None = the preset's
    encoder_taps: tuple[int, ...] | None = None
    normalisation: str = "fork"                 # 'fork' = (x-0.45)/0.225 (spec §11.4) or 'imagenet'
    frozen: tuple[str, ...] = ("encoder",)      # parameter path prefixes no optimiser touches (fork)
    decoder_channels: tuple[int, int, int, int] = (64, 128, 256, 256)
    decoder_name: str = DECODER_NAME
    # Stereo geometry: bins in pixels of the training images, depth = d2d / disparity. 'auto' values are
    # derived from the training set by `resolve_geometry` before the model is built.
    min_disp: schema.Float | Literal["auto"] = 2.0
    max_disp: schema.Float | Literal["auto"] = 300.0
    n_bins: int = 49
    d2d: schema.Float | Literal["auto"] = 400.9
    depth_range: tuple[schema.Float, schema.Float] | None = None  # metres the bins cover when min/max_disp: auto
    image_size: tuple[int, int] = (252, 840)    # training crop (H, W)
    train_side: str = "o"

    def __post_init__(self):
        for p in self.frozen:
            if p.split(".")[0] not in ("encoder", "decoder"):
                raise ValueError(f"frozen entry {p!r} must start with 'encoder' or 'decoder'")
        auto_bins = [k for k in ("min_disp", "max_disp") if getattr(self, k) == "auto"]
        if auto_bins and self.depth_range is None:
            raise ValueError(f"{' and '.join(auto_bins)}: auto needs depth_range [min, max] (metres)")
        if self.depth_range is not None:
            if len(auto_bins) < 2:
                raise ValueError("depth_range sets the bins only with min_disp: auto and max_disp: auto; "
                                 "remove it or set both to auto")
            if not 0 < self.depth_range[0] < self.depth_range[1]:
                raise ValueError(f"depth_range must be [min, max] with 0 < min < max, got {list(self.depth_range)}")
        if not auto_bins and not 0 < self.min_disp < self.max_disp:
            raise ValueError(f"the bins need 0 < min_disp < max_disp, got {self.min_disp} and {self.max_disp}")

    @property
    def resolved(self) -> bool:
        """Whether d2d and the bins are numbers (no 'auto' left)."""
        return "auto" not in (self.d2d, self.min_disp, self.max_disp)

    def resolve_geometry(self, fx_baseline: float) -> "TiODepthConfig":
        """The 'auto' values from fx * baseline (fx in pixels of the training images, baseline in metres):
        d2d = fx * baseline; min_disp = d2d / depth_range[1]; max_disp = d2d / depth_range[0]."""
        d2d = fx_baseline if self.d2d == "auto" else self.d2d
        if self.depth_range is None:
            return dataclasses.replace(self, d2d=d2d)
        near, far = self.depth_range
        return dataclasses.replace(self, d2d=d2d, min_disp=d2d / far, max_disp=d2d / near, depth_range=None)

    def encoder_config(self) -> DepthAnythingV2Config:
        return DepthAnythingV2Config.preset(self.variant, depth=self.encoder_depth, taps=self.encoder_taps)

    def bin_disparities(self) -> list[float]:
        """d_j = max_disp * (max_disp / min_disp) ** (j / (N - 1) - 1), in float64 (spec §2.2)."""
        return disparity_bins_float64(self.min_disp, self.max_disp, self.n_bins)

    def decoder_config(self, enc_channels) -> DecoderConfig:
        return DecoderConfig(enc_channels=tuple(enc_channels), channels=self.decoder_channels,
                             n_bins=self.n_bins, train_width=self.image_size[1],
                             norm_disp_range=tuple(d / self.image_size[1] for d in self.bin_disparities()),
                             **parse_decoder_name(self.decoder_name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TiODepthConfig":
        """The config `to_dict` wrote; a bad key raises a `schema.ConfigError` (a ValueError) naming it."""
        return schema.from_dict(cls, d, "TiO-Depth config")


def volume_outputs(logits, bins, d2d: float, name: str, side: str) -> dict:
    """Softmax over the bins (in float32), expected disparity and depth = d2d / disparity (no clamp)."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    disp = jnp.sum(p * bins, axis=-1, keepdims=True)
    return {
        f"{name}_dvolume_0_{side}": logits,
        f"{name}_pvolume_0_{side}": jax.lax.stop_gradient(p),
        f"{name}_pvolume_wg_0_{side}": p,
        f"{name}_disp_0_{side}": disp,
        f"{name}_depth_0_{side}": d2d / disp,
    }


class TiODepth(nnx.Module):
    def __init__(self, cfg: TiODepthConfig, *, dtype=jnp.float32, remat: Remat = False, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = TiOEncoder(cfg.encoder_config(), normalisation=cfg.normalisation, dtype=dtype,
                                  remat=remat, rngs=rngs)
        self.decoder = DPDecoder(cfg.decoder_config(self.encoder.channels), dtype=dtype, rngs=rngs)

    @property
    def bins(self):
        """(N,) float32 bin disparities (`volume_dk`)."""
        return jnp.asarray(disparity_bins(self.cfg.min_disp, self.cfg.max_disp, self.cfg.n_bins))

    def decode_mono(self, feats, image_hw, side: str, *, train: bool, with_mo: bool = False) -> dict:
        """Mono decoder on a feature pyramid: volume outputs and offsets under 'mono' or 'refmono'."""
        logits, mid, deltas = self.decoder.mono(feats, image_hw, train=train, with_mo=with_mo)
        name = "refmono" if with_mo else "mono"
        out = volume_outputs(mid if with_mo else logits, self.bins, self.cfg.d2d, name, side)
        out.update({f"{name}_{k}_{side}": v for k, v in deltas.items()})
        return out

    def mono(self, image, side: str = "s", *, train: bool = False) -> dict:
        """Mono path (spec §2.5.1) on one view."""
        feats = self.encoder(image)
        out = {f"enc_feats_{side}": feats, f"enc_feats_{side}_wog": jax.lax.stop_gradient(feats)}
        out.update(self.decode_mono(feats, image.shape[1:3], side, train=train))
        return _with_final(out, f"mono_depth_0_{side}", f"mono_disp_0_{side}")

    def stereo(self, image_s, image_o, direct=None, *, train: bool = False, outputs: dict | None = None) -> dict:
        """Stereo path (spec §2.5.2). `outputs` may already hold the mono results of either view.

        direct: (B,) +1 when s is a left view, -1 when it is a right view (default +1).
        """
        out = dict(outputs or {})
        image_hw = image_s.shape[1:3]
        for side, image in (("s", image_s), ("o", image_o)):
            if f"enc_feats_{side}_wog" not in out:  # no gradient through this work (torch.no_grad)
                feats = jax.lax.stop_gradient(self.encoder(image))
                mono = self.decode_mono(feats, image_hw, side, train=train)
                out[f"enc_feats_{side}_wog"] = feats
                out.update(jax.lax.stop_gradient(mono))
        if direct is None:
            direct = jnp.ones((image_s.shape[0],), jnp.float32)
        logits_s, logits_o, costs = self.decoder.stereo(out["enc_feats_s_wog"], out["enc_feats_o_wog"], -direct,
                                                        image_hw, train=train)
        bins = self.bins
        for k, cost in costs.items():
            p = jax.nn.softmax(cost.astype(jnp.float32), axis=-1)
            out[f"cost_{k}"] = p
            out[f"cost_disp_{k}"] = jnp.sum(p * bins, axis=-1, keepdims=True)
        for side, logits in (("s", logits_s), ("o", logits_o)):
            v = volume_outputs(logits, bins, self.cfg.d2d, "stereo", side)
            del v[f"stereo_pvolume_wg_0_{side}"]
            out.update(v)
        return _with_final(out, "stereo_depth_0_s", "stereo_disp_0_s")

    def refine(self, image_s, *, train: bool = False, outputs: dict | None = None) -> dict:
        """Refine path (spec §2.5.3): the mono decoder with the distilled midout offsets and head."""
        out = dict(outputs or {})
        if "enc_feats_s_wog" not in out:
            out["enc_feats_s_wog"] = self.encoder(image_s)
        out.update(self.decode_mono(out["enc_feats_s_wog"], image_s.shape[1:3], "s", train=train, with_mo=True))
        return _with_final(out, "refmono_depth_0_s", "refmono_disp_0_s")

    def inference(self, inputs: dict, modes=("Refine",)) -> dict:
        """The original's `inference_forward`: run `modes` in order on color_s (and color_o), eval mode."""
        out: dict = {}
        for mode in modes:
            if mode == "Mono":
                out.update(self.mono(inputs["color_s"], "s"))
            elif mode == "Stereo":
                out = self.stereo(inputs["color_s"], inputs["color_o"], inputs.get("direct"), outputs=out)
            elif mode == "Refine":
                out = self.refine(inputs["color_s"], outputs=out)
            else:
                raise ValueError(f"unknown path {mode!r}; paths are {PATHS}")
        return out


def _with_final(out: dict, depth_key: str, disp_key: str) -> dict:
    out["depth"], out["disp"] = out[depth_key], out[disp_key]
    return out
