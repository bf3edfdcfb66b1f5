"""DINOv2 / DPT / Depth-Anything-V2 modules on small custom configs (the fixtures cover the presets)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import DinoV2, DinoV2Config, attend, attention_implementation
from tiodepth_jax.models.dpt import DPTConfig


def tiny_config(depth=3, ffn="mlp", taps=(0, 1, 2, 2)):
    return DepthAnythingV2Config(
        dinov2=DinoV2Config(embed_dim=48, depth=depth, num_heads=4, ffn=ffn),
        dpt=DPTConfig(in_channels=48, features=16, out_channels=(8, 16, 24, 32)),
        taps=taps)


def image(h=42, w=70, b=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, 3)), jnp.float32)


def test_shapes_and_pyramid():
    model = DepthAnythingV2(tiny_config(), rngs=nnx.Rngs(0))
    x = image(84, 280)
    out = nnx.jit(lambda m, x: m.stage_outputs(x))(model, x)
    assert out["depth"].shape == (2, 84, 280) and bool(jnp.all(out["depth"] >= 0))
    tokens = [t for t, _ in model.intermediate_layers(x)]
    pyramid = model.depth_head.pyramid(tokens, model.grid(x))
    # 1/3.5, 1/7, 1/14 and 1/28 of the input (6x20 patch grid).
    assert [p.shape for p in pyramid] == [(2, 24, 80, 16), (2, 12, 40, 16), (2, 6, 20, 16), (2, 3, 10, 16)]
    # eager against jitted: the same float32 function, summed in another order (values of order 1; up to
    # 1.3e-6 apart on AVX2-only CPUs)
    for k, p in enumerate(pyramid, 1):
        np.testing.assert_allclose(p, out[f"scratch.layer{k}_rn"], rtol=1e-5, atol=1e-5)


def test_intermediate_layers_are_normed_taps():
    model = DepthAnythingV2(tiny_config(taps=(2, 0, 1, 2)), rngs=nnx.Rngs(1))
    x = image()
    trunk = model.pretrained
    layers = model.intermediate_layers(x)
    # Recompute by hand: run the stacked blocks one by one.
    h = trunk.prepare_tokens(x)
    seen = []
    for i in range(trunk.cfg.depth):
        block = nnx.merge(*_block_i(trunk, i))
        h = block(h)
        seen.append(trunk.norm(h))
    for (tokens, cls), t in zip(layers, (2, 0, 1, 2)):
        np.testing.assert_allclose(tokens, seen[t][:, 1:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cls, seen[t][:, 0], rtol=1e-5, atol=1e-5)


def _block_i(trunk, i):
    graphdef, state = nnx.split(trunk.blocks)
    return graphdef, jax.tree.map(lambda a: a[i], state)


def test_swiglu_width_and_forward():
    assert DinoV2Config(embed_dim=1536, depth=1, num_heads=24, ffn="swiglu").ffn_hidden == 4096
    model = DepthAnythingV2(tiny_config(ffn="swiglu"), rngs=nnx.Rngs(0))
    assert model.pretrained.blocks.mlp.w12.kernel.shape == (3, 48, 2 * 128)  # 4*48*2/3 = 128
    assert np.isfinite(np.asarray(model(image()))).all()


def explicit_attention(q, k, v):
    """DINOv2's own attention (q scaled first, float32 softmax): (B, T, heads, hd) x3 -> (B, T, heads, hd)."""
    p = jax.lax.Precision.HIGHEST
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1] ** -0.5, k, precision=p)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=p)


def qkv(shape, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype) for _ in range(3)]


def test_attention_is_the_explicit_softmax():
    q, k, v = qkv((2, 29, 3, 12))  # an odd token count, as 1 + h*w often is
    np.testing.assert_allclose(attend(q, k, v), explicit_attention(q, k, v), rtol=1e-6, atol=1e-7)


def test_attention_softmax_runs_in_float32_under_bfloat16():
    q, k, v = qkv((1, 15, 2, 16), jnp.bfloat16)
    out = attend(q, k, v)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), explicit_attention(*qkv((1, 15, 2, 16))), atol=0.05)
    exps = [e for e in jax.make_jaxpr(attend)(q, k, v).jaxpr.eqns if e.primitive.name == "exp"]
    assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)


def test_attention_implementation_per_backend():
    assert attention_implementation("gpu", jnp.bfloat16) == "cudnn"
    assert attention_implementation("gpu", jnp.float32) is None   # cuDNN's fused attention takes no float32
    assert attention_implementation("cpu", jnp.bfloat16) is None
    assert attention_implementation("tpu", jnp.bfloat16) is None


@pytest.mark.parametrize("policy", [True, "dots_with_no_batch_dims_saveable"])
def test_remat_matches_and_differentiates(policy):
    cfg = DinoV2Config(embed_dim=32, depth=2, num_heads=2)
    x = image(28, 28, 1)
    plain = DinoV2(cfg, rngs=nnx.Rngs(0))
    remat = DinoV2(cfg, remat=policy, rngs=nnx.Rngs(0))

    def loss(trunk):
        return sum(jnp.mean(t**2) + jnp.mean(c) for t, c in trunk(x, (0, 1)))

    (l1, g1), (l2, g2) = nnx.value_and_grad(loss)(plain), nnx.value_and_grad(loss)(remat)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(g1)), jax.tree.leaves(nnx.state(g2))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    cfg = tiny_config()
    x = image()
    f32 = DepthAnythingV2(cfg, rngs=nnx.Rngs(0))
    bf16 = DepthAnythingV2(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert {a.dtype for a in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    a, b = np.asarray(f32(x)), np.asarray(bf16(x))
    assert b.dtype == np.float32
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


def test_scanned_trunk_size_does_not_grow_with_depth():
    """The compiled program holds one block body whatever the depth (nnx.scan)."""
    def n_eqns(depth):
        trunk = DinoV2(DinoV2Config(embed_dim=32, depth=depth, num_heads=2), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(trunk)
        fn = lambda s, x: nnx.merge(graphdef, s)(x, (0,))  # noqa: E731
        return len(str(jax.make_jaxpr(fn)(state, image(14, 28, 1)).jaxpr).splitlines())

    assert n_eqns(2) == n_eqns(12)


def test_bad_inputs_and_configs():
    model = DepthAnythingV2(tiny_config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="multiples of 14"):
        model(image(40, 70))
    with pytest.raises(ValueError, match="taps"):
        tiny_config(taps=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="divisible"):
        DinoV2Config(embed_dim=50, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="ffn"):
        DinoV2Config(embed_dim=48, depth=1, num_heads=4, ffn="gelu")
    with pytest.raises(ValueError, match="remat must be a bool or one of nothing_saveable"):
        DinoV2(DinoV2Config(embed_dim=32, depth=1, num_heads=2), remat="everything_saveable", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown Depth-Anything-V2 variant 'vitx'"):
        DepthAnythingV2Config.preset("vitx")
    cfg = DepthAnythingV2Config.preset("vitl", depth=4, taps=(0, 1, 2, 3))
    assert DepthAnythingV2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not a Depth-Anything-V2 model config"):
        DepthAnythingV2Config.from_dict({"dinov2": {}})
