"""tiodepth_jax.ops.resize against torch.nn.functional.interpolate (float32, CPU).

Inputs are standard-normal, so errors are relative to data of unit scale. Measured errors are about one
float32 ulp of the output (<= 5e-7); ATOL leaves headroom for other CPUs and XLA fusion choices. Input
gradients sum many terms, so they are compared relative to their own scale.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.hlo import largest_constant
from tiodepth_jax.ops.resize import interpolate_bicubic, interpolate_bilinear, interpolate_nearest, pad_hw

ATOL = 1e-5

LINEAR_CASES = [
    ((2, 5, 7, 3), dict(size=(11, 13))),
    ((2, 5, 7, 3), dict(scale_factor=2.0)),
    ((1, 37, 37, 2), dict(scale_factor=(18.1 / 37, 60.1 / 37))),
    ((1, 37, 37, 2), dict(scale_factor=37.1 / 37)),  # output size == input size
    ((1, 8, 24, 2), dict(scale_factor=3.5)),  # the 72x240 -> 252x840 ratio
    ((1, 8, 24, 2), dict(size=(28, 84))),
    ((1, 9, 13, 2), dict(scale_factor=(0.7, 1.7))),
    ((1, 36, 36, 2), dict(size=(18, 18))),
    ((1, 126, 420, 1), dict(size=(63, 210))),
    ((1, 126, 420, 1), dict(scale_factor=0.5)),
    ((1, 9, 13, 2), dict(size=(1, 1))),
    ((1, 9, 13, 2), dict(size=(1, 5))),
]

CUBIC_CASES = [
    ((1, 37, 37, 2), dict(scale_factor=(5.1 / 37, 7.1 / 37))),
    ((1, 37, 37, 2), dict(scale_factor=(9.1 / 37, 13.1 / 37))),
    ((1, 37, 37, 2), dict(scale_factor=(18.1 / 37, 60.1 / 37))),
    ((1, 37, 37, 2), dict(scale_factor=37.1 / 37)),
    ((2, 9, 13, 3), dict(size=(20, 7))),
    ((1, 8, 24, 2), dict(scale_factor=3.5)),
    ((1, 9, 13, 2), dict(size=(1, 1))),
]

NEAREST_CASES = [
    ((1, 72, 24, 2), dict(scale_factor=3.5)),  # 72 -> 252
    ((1, 14, 14, 2), dict(size=(27, 27))),
    ((1, 9, 9, 2), dict(scale_factor=2.0)),  # 9 -> 18
    ((1, 9, 12, 2), dict(size=(18, 24))),
    ((1, 20, 18, 2), dict(scale_factor=(0.35, 0.5))),
    ((1, 20, 18, 2), dict(size=(7, 5))),
    ((2, 6, 10, 3), dict(scale_factor=(1.0, 2.5))),
]


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _to_torch(x):
    """NHWC numpy -> NCHW-contiguous torch tensor (the layout PyTorch models run in)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _torch_interpolate(x, mode, **kwargs):
    return _to_nhwc(F.interpolate(_to_torch(x), mode=mode, **kwargs))


def _assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=ATOL * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape,kwargs", LINEAR_CASES)
def test_bilinear_matches_torch(shape, kwargs, align_corners):
    x = _random(shape, seed=0)
    ref = _torch_interpolate(x, "bilinear", align_corners=align_corners, **kwargs)
    out = np.asarray(interpolate_bilinear(jnp.asarray(x), align_corners=align_corners, **kwargs))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape,kwargs", CUBIC_CASES)
def test_bicubic_matches_torch(shape, kwargs, align_corners):
    x = _random(shape, seed=1)
    ref = _torch_interpolate(x, "bicubic", align_corners=align_corners, **kwargs)
    out = np.asarray(interpolate_bicubic(jnp.asarray(x), align_corners=align_corners, **kwargs))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("shape,kwargs", NEAREST_CASES)
def test_nearest_matches_torch_exactly(shape, kwargs):
    x = _random(shape, seed=2)
    ref = _torch_interpolate(x, "nearest", **kwargs)
    out = np.asarray(interpolate_nearest(jnp.asarray(x), **kwargs))
    np.testing.assert_array_equal(out, ref)


def test_nearest_legacy_indices():
    """Legacy nearest floors d / 3.5 for 72 -> 252 and d * 14 / 27 for 14 -> 27."""
    rows = np.arange(72, dtype=np.float32).reshape(1, 72, 1, 1)
    out = np.asarray(interpolate_nearest(jnp.asarray(rows), scale_factor=(3.5, 1.0)))[0, :8, 0, 0]
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 1, 1, 1, 2])
    rows = np.arange(14, dtype=np.float32).reshape(1, 14, 1, 1)
    out = np.asarray(interpolate_nearest(jnp.asarray(rows), size=(27, 1)))[0, :, 0, 0]
    np.testing.assert_array_equal(out, np.floor(np.arange(27) * np.float32(14 / 27)))


@pytest.mark.parametrize("mode,fn", [("bilinear", interpolate_bilinear), ("bicubic", interpolate_bicubic)])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n_in,kwargs", [
    (37, dict(scale_factor=(1.0, 60.1 / 37))),
    (37, dict(scale_factor=(1.0, 13.1 / 37))),
    (24, dict(scale_factor=(1.0, 3.5))),
    (420, dict(size=(1, 210))),
    (11, dict(size=(1, 29))),
])
def test_weights_bit_exact(mode, fn, align_corners, n_in, kwargs):
    """On one-hot rows the output is the weight table itself: it must equal PyTorch's bit for bit."""
    eye = np.eye(n_in, dtype=np.float32).reshape(n_in, 1, n_in, 1)  # (B=n_in, H=1, W=n_in, C=1)
    ref = _torch_interpolate(eye, mode, align_corners=align_corners, **kwargs)
    out = np.asarray(fn(jnp.asarray(eye), align_corners=align_corners, **kwargs))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("mode,fn", [("bilinear", interpolate_bilinear), ("bicubic", interpolate_bicubic)])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape,kwargs", [
    ((2, 5, 7, 3), dict(size=(11, 13))),
    ((1, 8, 24, 2), dict(scale_factor=3.5)),
    ((1, 37, 37, 2), dict(scale_factor=(18.1 / 37, 60.1 / 37))),
    ((1, 36, 20, 2), dict(size=(18, 10))),
])
def test_input_gradient_matches_torch(mode, fn, align_corners, shape, kwargs):
    x = _random(shape, seed=3)
    xt = _to_torch(x).requires_grad_()
    out_t = F.interpolate(xt, mode=mode, align_corners=align_corners, **kwargs)
    cotangent = _random(_to_nhwc(out_t).shape, seed=4)
    out_t.backward(_to_torch(cotangent))
    _, vjp = jax.vjp(lambda a: fn(a, align_corners=align_corners, **kwargs), jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(cotangent))
    _assert_close(grad, _to_nhwc(xt.grad))


@pytest.mark.parametrize("mode,fn,kwargs", [
    ("bilinear", interpolate_bilinear, dict(scale_factor=3.5, align_corners=False)),
    ("bilinear", interpolate_bilinear, dict(size=(11, 13), align_corners=True)),
    ("bicubic", interpolate_bicubic, dict(scale_factor=(18.1 / 37, 60.1 / 37))),
    ("nearest", interpolate_nearest, dict(size=(27, 27))),
])
def test_jit_matches_torch(mode, fn, kwargs):
    """Under jit XLA may fuse multiply-adds differently from eager mode; the result must still match."""
    x = _random((1, 14, 14, 2), seed=5)
    out = jax.jit(functools.partial(fn, **kwargs))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), _torch_interpolate(x, mode, **kwargs), rtol=0, atol=ATOL)


@pytest.mark.parametrize("fn", [interpolate_bilinear, interpolate_bicubic, interpolate_nearest])
@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one of size or scale_factor"),
    (dict(size=(4, 4), scale_factor=2.0), "exactly one of size or scale_factor"),
    (dict(size=(4, 4, 4)), "size must be"),
    (dict(scale_factor=0.01), "output size must be positive"),
])
def test_invalid_arguments_raise(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(jnp.zeros((1, 8, 8, 1)), **kwargs)


@pytest.mark.parametrize("fn,kwargs,taps", [
    (interpolate_bilinear, dict(size=(5, 7), align_corners=True), 2),
    (interpolate_bilinear, dict(size=(5, 7), align_corners=False), 2),
    (interpolate_bicubic, dict(size=(5, 31)), 4),
    (interpolate_nearest, dict(size=(30, 50)), 1),
])
def test_gradient_is_not_evaluated_at_compile_time(fn, kwargs, taps):
    """The cotangent of sum(resize(x)) is a constant. Were the tables constants too, XLA would evaluate the
    transposed gathers, or part of them, while compiling (minutes for a (1, 252, 840, 49) volume) and embed the
    result in the program: every constant left must be no larger than a table (an axis's indices of all taps)."""
    x = jax.ShapeDtypeStruct((1, 12, 20, 3), jnp.float32)
    compiled = jax.jit(jax.grad(lambda a: jnp.sum(fn(a, **kwargs)))).lower(x).compile()
    longest_table = taps * max(12, 20, *jax.eval_shape(functools.partial(fn, **kwargs), x).shape[1:3])
    assert largest_constant(compiled) <= longest_table


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("edge", "replicate")])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 2, 9, 1)])
def test_pad_hw_matches_torch(mode, torch_mode, shape):
    """Values are exact copies; the input gradient sums the same terms as PyTorch's."""
    x = _random(shape, seed=6)
    xt = _to_torch(x).requires_grad_()
    out_t = F.pad(xt, (1, 1, 1, 1), mode=torch_mode)
    cotangent = _random(_to_nhwc(out_t).shape, seed=7)
    out_t.backward(_to_torch(cotangent))
    out, vjp = jax.vjp(lambda a: pad_hw(a, mode), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(out), _to_nhwc(out_t))
    _assert_close(vjp(jnp.asarray(cotangent))[0], _to_nhwc(xt.grad))


def test_pad_hw_rejects_other_modes():
    with pytest.raises(ValueError, match="mode must be one of"):
        pad_hw(jnp.zeros((1, 4, 4, 1)), "constant")
