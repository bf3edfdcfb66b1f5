"""Decoder building blocks: PyTorch BatchNorm semantics, functional state threading, offsets, the name grammar."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tiodepth_jax.models.decoder import DECODER_NAME, BatchNorm2d, DecoderConfig, DPDecoder, Offset, offset_warp, \
    parse_decoder_name


def test_batchnorm_matches_torch_train_and_eval():
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(1.5, 2.0, size=(2, 5, 7, 4)).astype(np.float32) for _ in range(2))
    ours = BatchNorm2d(4)
    ours.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, 4), jnp.float32)
    ours.bias[...] = jnp.asarray(rng.uniform(-0.2, 0.2, 4), jnp.float32)
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(ours.scale[...])))
        ref.bias.copy_(torch.tensor(np.asarray(ours.bias[...])))
    ref.train()
    for x in (x1, x2):  # two updates: momentum 0.1, unbiased variance
        y = ours(jnp.asarray(x), train=True)
        y_ref = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], ref.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.running_var.numpy(), rtol=1e-6, atol=1e-6)
    assert int(ours.num_batches_tracked[...]) == int(ref.num_batches_tracked) == 2
    ref.eval()
    y = ours(jnp.asarray(x1), train=False)
    y_ref = ref(torch.from_numpy(x1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_batch_statistics_thread_through_a_pure_function():
    """split -> pure jitted function -> new BatchStat state: the training step's pattern (jax_stack.md §3)."""
    offset = Offset(8, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(offset, nnx.Param, nnx.BatchStat)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 9, 16)), jnp.float32)

    @jax.jit
    def step(params, stats, x):
        model = nnx.merge(graphdef, params, stats, copy=True)
        y = model(x, train=True)
        return y, nnx.state(model, nnx.BatchStat)

    _, new_stats = step(params, stats, x)
    assert int(new_stats["bn"]["num_batches_tracked"][...]) == 1
    assert not np.allclose(new_stats["bn"]["mean"][...], stats["bn"]["mean"][...])
    assert int(stats["bn"]["num_batches_tracked"][...]) == 0  # inputs untouched


def test_offsets_start_at_zero_and_zero_offsets_are_identity():
    offset = Offset(8, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 9, 16)), jnp.float32)
    delta = offset(x, train=False)
    assert delta.shape == (2, 6, 9, 2) and float(jnp.abs(delta).max()) == 0.0
    feats = x[..., :5]
    np.testing.assert_allclose(offset_warp(feats, delta), feats, rtol=0, atol=1e-6)
    shifted = offset_warp(feats, jnp.zeros_like(delta).at[..., 0].set(1.0))  # one pixel to the right
    np.testing.assert_allclose(shifted[:, :, :-1], feats[:, :, 1:], atol=1e-5)
    assert float(jnp.abs(shifted[:, :, -1]).max()) == 0.0  # zeros padding


def test_decoder_name_grammar_and_layer_order():
    assert parse_decoder_name(DECODER_NAME) == {"sfg_scales": (3, 2, 1), "db_scales": (3, 2, 1)}
    with pytest.raises(ValueError, match="DeformConv"):
        parse_decoder_name("StereoDecV9-3-2-1_3_2_1*MFM*DeformConv*SDFARaw")
    with pytest.raises(ValueError, match="SDFARaw"):
        parse_decoder_name("StereoDecV9-3-2-1_3_2_1*MFM*FinalBranch")
    cfg = DecoderConfig(enc_channels=(128,) * 4, norm_disp_range=(0.01,) * 49)
    names = DPDecoder.torch_index_names(cfg)
    # spec §3.3: 25 modules, 0-16 decoder, 17 out, 18-20 MFM, 21-23 midout, 24 midout-out.
    assert len(names) == 25 and names[:5] == ["dec3_0", "sdfa3_0", "sdfa3_1", "sdfa3_2", "dec3_1"]
    assert names[15:] == ["dec0_0", "dec0_1", "out", "mfm3", "mfm2", "mfm1", "midout3", "midout2", "midout1",
                          "midout_out"]


def test_checkpoint_round_trip_keeps_batchnorm_statistics(tmp_path):
    from tiodepth_jax.checkpoint import load_model, save_model
    from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
    cfg = TiODepthConfig(variant="vits", encoder_depth=1, encoder_taps=(0, 0, 0, 0), decoder_channels=(16,) * 4,
                         image_size=(28, 56))
    model = TiODepth(cfg, rngs=nnx.Rngs(0))
    model.decoder.sdfa1_1.bn.mean[...] = jnp.arange(16, dtype=jnp.float32)
    model.decoder.sdfa1_1.bn.num_batches_tracked[...] = jnp.asarray(7, jnp.int32)
    loaded = load_model(save_model(tmp_path / "ck", model), kind="tiodepth")
    np.testing.assert_array_equal(loaded.decoder.sdfa1_1.bn.mean[...], np.arange(16))
    assert int(loaded.decoder.sdfa1_1.bn.num_batches_tracked[...]) == 7
    with pytest.raises(ValueError, match="at least 16 channels"):
        TiODepthConfig(decoder_channels=(8, 8, 8, 8)).decoder_config((16,) * 4)
