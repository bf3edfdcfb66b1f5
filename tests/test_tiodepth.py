"""TiO-Depth with every DINOv2 variant: the encoder from Depth-Anything-V2 weights, then all three paths.

The fork builds only DINOv2-B (spec §11.2); here S, B, L and G (reduced depth in the fixtures) each use
their own Depth-Anything-V2 head widths. The encoder pyramid is checked against the Depth-Anything-V2
fixtures' `scratch.layer<k>_rn` outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert.common import ConversionError
from convert.tiodepth import encoder_from_depth_anything_v2
from tests.parity import FixtureSet, dav2_params, nchw
from tiodepth_jax.models.decoder import DPDecoder
from tiodepth_jax.models.encoder import NORMALISATIONS
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig


def smallest_input(fs: FixtureSet) -> str:
    return min((n for n in fs.names() if n.endswith("/input")), key=lambda n: np.prod(fs.entries[n]["shape"]))


@pytest.mark.parametrize("fs", dav2_params())
def test_every_variant_end_to_end(fs: FixtureSet):
    cfg_json = fs.meta["config"]
    name = smallest_input(fs)
    size = name.split("/")[0]
    x = fs.whole(name).transpose(0, 2, 3, 1)  # ImageNet-normalised, NHWC
    h, w = x.shape[1:3]
    taps = tuple(cfg_json["intermediate_layer_idx"])
    depth = cfg_json["dinov2"]["depth"]
    variant = cfg_json["constructor_args"]["encoder"]
    cfg = TiODepthConfig(variant=variant, encoder_depth=depth, encoder_taps=taps, normalisation="imagenet",
                         image_size=(56, 112))
    encoder, report = encoder_from_depth_anything_v2(fs.state_dict(), cfg)
    assert not report.missing and not report.unexpected
    assert any("refinenet" in k for k in report.ignored) and "pretrained.mask_token" in report.ignored

    # The pyramid equals Depth-Anything-V2's layer<k>_rn for the same normalised input.
    mean, std = (np.asarray(v, np.float32) for v in NORMALISATIONS["imagenet"])
    pyramid = nnx.jit(lambda enc, img: enc(img))(encoder, x * std + mean)
    for k, p in enumerate(pyramid, 1):
        c = fs.compare(f"{size}/head/scratch.layer{k}_rn", nchw(p))
        assert c.ok, f"{variant} layer{k}_rn: {c.rel_l2:.2e} > {c.tol:.1e}"

    # Whole network at its (small) training size: this encoder with a random decoder, Mono, Stereo, Refine.
    h, w = cfg.image_size
    model = nnx.eval_shape(lambda: TiODepth(cfg, rngs=nnx.Rngs(0)))
    model.encoder = encoder
    model.decoder = DPDecoder(cfg.decoder_config(encoder.channels), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    batch = {"color_s": jnp.asarray(rng.uniform(size=(1, h, w, 3)), jnp.float32),
             "color_o": jnp.asarray(rng.uniform(size=(1, h, w, 3)), jnp.float32),
             "direct": jnp.ones((1,), jnp.float32)}
    out = nnx.jit(lambda m, b: m.inference(b, ("Mono", "Stereo", "Refine")))(model, batch)
    out = jax.device_get(out)
    for key in ("mono_depth_0_s", "stereo_depth_0_s", "refmono_depth_0_s", "depth"):
        assert out[key].shape == (1, h, w, 1) and np.isfinite(out[key]).all() and (out[key] > 0).all(), key
    assert [f.shape[-1] for f in out["enc_feats_s_wog"]] == [cfg.encoder_config().dpt.features] * 4


@pytest.mark.parametrize("fs", dav2_params())
def test_encoder_checkpoint_must_match_the_config(fs: FixtureSet):
    """A set's weights in a config of another variant (or another depth) are refused, naming both."""
    cfg_json = fs.meta["config"]
    variant, depth = cfg_json["constructor_args"]["encoder"], cfg_json["dinov2"]["depth"]
    taps = tuple(cfg_json["intermediate_layer_idx"])
    other = "vitb" if variant != "vitb" else "vits"
    with pytest.raises(ConversionError, match=f"{variant} model with {depth} blocks; the config needs {other}"):
        encoder_from_depth_anything_v2(fs.state_dict(), TiODepthConfig(variant=other, encoder_depth=depth,
                                                                       encoder_taps=taps))
    # the right variant with another depth
    wrong_depth = depth + 1
    with pytest.raises(ConversionError, match=f"{variant} model with {depth} blocks; the config needs {variant} "
                                              f"with {wrong_depth}"):
        encoder_from_depth_anything_v2(fs.state_dict(), TiODepthConfig(
            variant=variant, encoder_depth=wrong_depth, encoder_taps=tuple(t for t in taps if t < wrong_depth)))
