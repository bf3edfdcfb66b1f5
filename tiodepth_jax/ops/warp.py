"""Bilinear warping that reproduces ``torch.nn.functional.grid_sample`` on NHWC arrays.

Reference: PyTorch ``aten/src/ATen/native/cpu/GridSamplerKernel.cpp`` (float32 CPU kernel) and
``GridSampler.h``. Grids are (B, Ho, Wo, 2) with the last axis (x, y) normalised to [-1, 1] exactly as in
PyTorch. Gradients come from JAX autodiff and match PyTorch's hand-written backward: ``floor`` is a constant
(piecewise gradient), taps outside the image contribute neither value nor gradient, and 'border' clipping has
gradient 1 strictly inside ``(0, size - 1)`` and 0 at or beyond the limits (PyTorch's
``clip_coordinates_set_grad`` treats the limits themselves as out of bounds).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .resize import fma_float32

_PADDING_MODES = ("zeros", "border")


# jitted: the training step calls it ~40 times on a few shapes, and each distinct call is then traced, differentiated
# and lowered once (the epoch-31 step lowers in 0.6 s less); XLA inlines it, so the compiled kernels are unchanged
@functools.partial(jax.jit, static_argnames=("padding_mode", "align_corners"))
def grid_sample(x, grid, *, padding_mode="zeros", align_corners=False):
    """``F.grid_sample(x, grid, mode='bilinear', padding_mode=padding_mode, align_corners=align_corners)``.

    Source pixel coordinate of a normalised coordinate g along an axis of ``size`` pixels:
    ``((g + 1) / 2) * (size - 1)`` when ``align_corners`` else ``((g + 1) * size - 1) / 2``, computed as
    ``(g + 1) * ((size - 1) / 2)`` and ``(g + 1) * (size / 2) - 0.5`` like the CPU kernel (bit-identical:
    the forms differ only by exact power-of-two scalings). 'border' clips it to ``[0, size - 1]``; 'zeros'
    gives out-of-image taps the value 0. PyTorch's compiled kernel fuses ``* (size / 2) - 0.5`` and the
    4-tap sum into FMAs, which JAX has no primitive for, so results differ from it by a few float32 ulps;
    where PyTorch's coordinate is an exact integer (pixel centres with align_corners=False, for some sizes)
    ours can be one ulp below it, and the piecewise gradient w.r.t. the grid then takes the slope of the
    neighbouring cell.

    x: (B, H, W, C), grid: (B, Ho, Wo, 2) -> (B, Ho, Wo, C).
    """
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
    _, h, w, _ = x.shape
    grid = grid.astype(x.dtype)
    sx = _unnormalize(grid[..., 0], w, align_corners)  # (B, Ho, Wo)
    sy = _unnormalize(grid[..., 1], h, align_corners)  # (B, Ho, Wo)
    if padding_mode == "border":
        sx, sy = _clip_coordinates(sx, w), _clip_coordinates(sy, h)
    return _bilinear_gather(x, sx, sy)


def identity_grid(h, w, align_corners=True):
    """``F.affine_grid(identity, (1, C, h, w), align_corners)[0]``: (h, w, 2) float32 of normalised (x, y).

    Per axis of n pixels: ``linspace(-1, 1, n)``, times ``(n - 1) / n`` when not ``align_corners``; a 1-pixel
    axis is 0. Computed with numpy at call time, bit-identical to PyTorch's float32 CPU result.
    """
    xs = _linspace_from_neg_one(w, align_corners)  # (w,)
    ys = _linspace_from_neg_one(h, align_corners)  # (h,)
    grid = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)  # (h, w, 2)
    return jnp.asarray(grid)


def _linspace_from_neg_one(n, align_corners):
    """ATen ``linspace_from_neg_one``: float32 linspace(-1, 1, n), scaled by (n - 1) / n if not align_corners.

    The linspace kernel computes ``-1 + step * i`` for the first half and ``1 - step * (n - 1 - i)`` for the
    second, each a fused multiply-add in PyTorch's compiled CPU kernel.
    """
    if n <= 1:
        return np.zeros((n,), np.float32)
    step = np.float32(2) / np.float32(n - 1)
    i = np.arange(n)
    half = n // 2
    first = fma_float32(step, i[:half].astype(np.float32), np.float32(-1))
    second = fma_float32(-step, (n - 1 - i[half:]).astype(np.float32), np.float32(1))
    values = np.concatenate([first, second])
    if not align_corners:
        values = values * np.float32(n - 1) / np.float32(n)
    return values


def _unnormalize(coord, size, align_corners):
    """Normalised coordinate -> pixel coordinate (``ComputeLocationBase::unnormalize``); keeps coord's dtype."""
    if align_corners:
        return (coord + 1) * ((size - 1) / 2)
    return (coord + 1) * (size / 2) - 0.5


def _clip_coordinates(coord, size):
    """Clip to ``[0, size - 1]`` with gradient 1 strictly inside and 0 at or beyond the limits."""
    inside = (coord > 0) & (coord < size - 1)
    clipped = jax.lax.stop_gradient(jnp.clip(coord, 0, size - 1))
    return jnp.where(inside, coord, clipped)


def _bilinear_gather(x, sx, sy):
    """Bilinear interpolation of x at pixel coordinates (sx, sy); taps outside the image read 0.

    Weights and summation order follow the CPU kernel: ``nw*s*e + ne*s*w + sw*n*e + se*n*w``.
    x: (B, H, W, C), sx, sy: (B, Ho, Wo) -> (B, Ho, Wo, C).
    """
    x0 = jnp.floor(sx)
    y0 = jnp.floor(sy)
    west = (sx - x0)[..., None]  # distance to the west column, (B, Ho, Wo, 1)
    north = (sy - y0)[..., None]  # distance to the north row
    east = 1 - west
    south = 1 - north
    ix0, iy0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    ix1, iy1 = ix0 + 1, iy0 + 1
    taps = [_tap_rows(x.shape, iy, ix) for iy, ix in ((iy0, ix0), (iy0, ix1), (iy1, ix0), (iy1, ix1))]
    weights = (south * east, south * west, north * east, north * west)
    return _weighted_taps(x, tuple(rows for rows, _ in taps), tuple(valid for _, valid in taps), weights)


def _tap_rows(shape, iy, ix):
    """The row of ``x.reshape(B * H * W, C)`` holding ``x[b, iy, ix]`` (0 where outside the image) and whether
    it is inside. shape: x's (B, H, W, C); iy, ix: (B, Ho, Wo) int32 -> rows int32, valid bool, (B, Ho, Wo)."""
    b, h, w, _ = shape
    valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    batch = jnp.arange(b, dtype=jnp.int32).reshape((b,) + (1,) * (iy.ndim - 1))
    rows = jnp.where(valid, (batch * h + iy) * w + ix, 0)
    # for a constant grid, keeps XLA from evaluating the gather or its transposed scatter-add at compile time
    return jax.lax.optimization_barrier((rows, valid))


@jax.custom_vjp
def _weighted_taps(x, rows, valid, weights):
    """``sum_k x[rows_k] * weights_k`` over the taps, left to right; an invalid tap reads 0.

    The forward reads each tap with its own gather, which XLA fuses into the sum; the gradient with respect to
    x adds all taps' contributions with one scatter-add (one kernel instead of one per tap).
    x: (B, H, W, C); rows, valid: K x (B, Ho, Wo); weights: K x (B, Ho, Wo, 1) -> (B, Ho, Wo, C).
    """
    return _weighted_taps_fwd(x, rows, valid, weights)[0]


def _weighted_taps_fwd(x, rows, valid, weights):
    table = x.reshape(-1, x.shape[-1])
    values = [jnp.where(v[..., None], jnp.take(table, r, axis=0, mode="clip"), 0) for r, v in zip(rows, valid)]
    out = values[0] * weights[0]
    for v, w in zip(values[1:], weights[1:]):
        out = out + v * w
    return out, (x.shape, rows, valid, weights, values)


def _weighted_taps_bwd(res, ct):
    shape, rows, valid, weights, values = res
    d_weights = tuple(jnp.sum(ct * v, axis=-1, keepdims=True) for v in values)
    # the barrier keeps a constant grid's contributions (weights times a constant cotangent) from being folded
    weights = jax.lax.optimization_barrier(weights)
    contrib = jnp.concatenate([jnp.where(v[..., None], ct * w, 0)[..., None, :] for v, w in zip(valid, weights)],
                              axis=-2)  # (B, Ho, Wo, K, C)
    index = jnp.concatenate([r[..., None] for r in rows], axis=-1)  # (B, Ho, Wo, K)
    table = jnp.zeros((math.prod(shape[:3]), shape[3]), ct.dtype)
    d_x = table.at[index.reshape(-1)].add(contrib.reshape(-1, shape[3]), mode="promise_in_bounds")
    return d_x.reshape(shape), None, None, d_weights


_weighted_taps.defvjp(_weighted_taps_fwd, _weighted_taps_bwd)
