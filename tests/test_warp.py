"""tiodepth_jax.ops.warp against torch.nn.functional.grid_sample / affine_grid (float32, CPU).

Values and cotangents are standard-normal; errors are compared relative to the scale of the reference
(max(1, max|ref|)): grid gradients carry the factor size / 2 of the unnormalisation.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.hlo import largest_constant
from tiodepth_jax.ops.warp import grid_sample, identity_grid

TOL = 1e-5
H, W = 6, 9  # for these sizes PyTorch's fused unnormalisation and ours floor pixel centres alike


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_identity_grid(h, w, align_corners):
    with warnings.catch_warnings():  # affine_grid warns about 1-pixel axes with align_corners=True
        warnings.simplefilter("ignore", UserWarning)
        return F.affine_grid(torch.eye(2, 3)[None], (1, 1, h, w), align_corners=align_corners)[0].numpy()


def _random_grid(align_corners, seed):
    """Uniform in [-1.3, 1.3]: inside and outside the image."""
    return np.random.default_rng(seed).uniform(-1.3, 1.3, (2, 5, 7, 2)).astype(np.float32)


def _centre_grid(align_corners, seed):
    """Every pixel centre of the image (the identity warp)."""
    return np.broadcast_to(_torch_identity_grid(H, W, align_corners), (2, H, W, 2)).copy()


def _border_grid(align_corners, seed):
    """Coordinates drawn from the first/last pixel centres, the image edges +-1 and just outside."""
    centres = _torch_identity_grid(H, W, align_corners)
    xs = np.concatenate([centres[0, [0, 1, -2, -1], 0], [-1.0, 1.0, -1.25, 1.25]]).astype(np.float32)
    ys = np.concatenate([centres[[0, 1, -2, -1], 0, 1], [-1.0, 1.0, -1.25, 1.25]]).astype(np.float32)
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(xs, (2, 6, 6)), rng.choice(ys, (2, 6, 6))], axis=-1)


def _assert_close(actual, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=TOL * scale)


@pytest.mark.parametrize("make_grid", [_random_grid, _centre_grid, _border_grid])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_values_and_gradients_match_torch(padding_mode, align_corners, make_grid):
    x = _random((2, H, W, 3), seed=0)
    grid = make_grid(align_corners, seed=1)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()
    gt = torch.from_numpy(grid).requires_grad_()
    out_t = F.grid_sample(xt, gt, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    cotangent = _random(out_t.shape, seed=2)  # (B, C, Ho, Wo)
    out_t.backward(torch.from_numpy(cotangent))

    def fn(a, g):
        return grid_sample(a, g, padding_mode=padding_mode, align_corners=align_corners)

    out, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(grid))
    grad_x, grad_grid = vjp(jnp.asarray(cotangent.transpose(0, 2, 3, 1)))

    _assert_close(out, out_t.detach().numpy().transpose(0, 2, 3, 1))
    _assert_close(grad_x, xt.grad.numpy().transpose(0, 2, 3, 1))
    _assert_close(grad_grid, gt.grad.numpy())


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (2, 3), (7, 37), (63, 210)])
def test_identity_grid_matches_affine_grid_exactly(h, w, align_corners):
    grid = np.asarray(identity_grid(h, w, align_corners=align_corners))
    np.testing.assert_array_equal(grid, _torch_identity_grid(h, w, align_corners))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_identity_warp_reproduces_input(padding_mode, align_corners):
    x = jnp.asarray(_random((1, H, W, 2), seed=3))
    grid = identity_grid(H, W, align_corners=align_corners)[None]
    out = grid_sample(x, grid, padding_mode=padding_mode, align_corners=align_corners)
    _assert_close(out, np.asarray(x))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_jit_matches_torch(padding_mode):
    """Under jit XLA may fuse multiply-adds differently from eager mode; the result must still match."""
    x = _random((2, H, W, 3), seed=4)
    grid = _random_grid(False, seed=5)
    out = jax.jit(lambda a, g: grid_sample(a, g, padding_mode=padding_mode))(jnp.asarray(x), jnp.asarray(grid))
    ref = F.grid_sample(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(grid),
                        mode="bilinear", padding_mode=padding_mode, align_corners=False)
    _assert_close(out, ref.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_gradient_for_a_constant_grid_is_not_evaluated_at_compile_time(padding_mode):
    """With a constant grid and the constant cotangent of sum(grid_sample(x)), XLA would evaluate the transposed
    gathers while compiling if it saw their indices as constants, and embed the gradient (x's size)."""
    x = jax.ShapeDtypeStruct((1, 12, 20, 3), jnp.float32)
    grid = identity_grid(12, 20)[None] * 0.9
    loss = lambda a: jnp.sum(grid_sample(a, grid, padding_mode=padding_mode, align_corners=True))  # noqa: E731
    assert largest_constant(jax.jit(jax.grad(loss)).lower(x).compile()) < x.size


def test_invalid_padding_mode_raises():
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)), padding_mode="reflection")
