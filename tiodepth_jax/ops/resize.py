"""Resizing that reproduces ``torch.nn.functional.interpolate`` (antialias=False) on NHWC arrays, and
one-pixel reflection and replication padding (``pad_hw``) by the same means.

Reference: PyTorch ``aten/src/ATen/native/UpSample.h`` and ``native/cpu/UpSampleKernel.cpp`` (the
NCHW-contiguous float32 CPU kernels).

Design. Output sizes are static, so for each spatial axis the source indices and weights are computed with
numpy at trace time in float32, rounding exactly where PyTorch's compiled float32 kernels round (including
the fused multiply-adds they contain), so the tables are bit-identical to PyTorch's. They are applied
separably with gathers (``jnp.take``) and per-output weights: the width pass runs first and the height pass
second, with taps summed left to right, which is the arithmetic of PyTorch's per-pixel
``out = sum_h wh * (sum_w ww * x)``. Gathers were chosen over dense interpolation matrices with einsum
because they perform only PyTorch's multiply-adds (a matmul adds many zero-weight terms in a backend-chosen
order, and runs in TF32 on GPUs by default) and cost O(taps) rather than O(input size) per output element.
The gradient of a gather is a scatter-add, as in PyTorch's backward kernels. Results differ from PyTorch's
only by the rounding of the weighted sums (PyTorch's compiler fuses some of them into FMAs): about one
float32 ulp of the output.

The taps of an axis are read by one gather. The tables reach XLA through an optimisation barrier, so that they
are not compile-time constants. Where the data a gather reads is constant too, XLA would otherwise evaluate
the gather, or its transposed scatter-add, while compiling (constant folding, in its HLO interpreter, at about
a microsecond per element), and embed the result in the program. That happens to the gradient of any function
linear in the resize's output, e.g. ``jax.grad(lambda x: jnp.sum(resize(x)))``, whose cotangent is a constant:
the scatter-add over a (1, 252, 840, 49) volume then took minutes to compile and became a 41 MB constant. A
dense interpolation matrix would not avoid it (XLA folds a dot of constants too) and adds the zero-weight
terms named above; the barrier costs nothing at run time.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_H_AXIS, _W_AXIS = 1, 2
_CUBIC_A = np.float32(-0.75)


def interpolate_bilinear(x, *, size=None, scale_factor=None, align_corners=False):
    """``F.interpolate(x, size, scale_factor, mode='bilinear', align_corners=align_corners)``.

    Source coordinate of output pixel ``d`` (per axis): ``scale * d`` when ``align_corners`` else
    ``max(scale * (d + 0.5) - 0.5, 0)``; it is interpolated linearly between ``floor(src)`` and the next
    pixel (the last pixel repeats). An axis whose output size equals its input size is copied unchanged.

    x: (B, H, W, C) -> (B, out_h, out_w, C).
    """
    return _resample(x, size, scale_factor, lambda n_in, n_out, scale: _linear_taps(
        n_in, n_out, scale, align_corners))


def interpolate_bicubic(x, *, size=None, scale_factor=None, align_corners=False):
    """``F.interpolate(x, size, scale_factor, mode='bicubic', align_corners=align_corners)``.

    Source coordinate of output pixel ``d``: ``scale * d`` when ``align_corners`` else
    ``scale * (d + 0.5) - 0.5`` (not clamped). Keys cubic convolution (A = -0.75) over the 4 taps
    ``floor(src) - 1 .. floor(src) + 2``, each clamped into ``[0, n_in - 1]`` (edge replication).
    Unlike bilinear, an axis whose output size equals its input size is still interpolated (with a
    scale_factor other than 1 that is not a copy), as PyTorch's CPU kernel does. PyTorch's CUDA kernel
    instead copies when both output sizes equal the input sizes, and its CPU backward then copies the
    cotangent; here the gradient is always the exact adjoint of this forward.

    x: (B, H, W, C) -> (B, out_h, out_w, C).
    """
    return _resample(x, size, scale_factor, lambda n_in, n_out, scale: _cubic_taps(
        n_in, n_out, scale, align_corners))


def interpolate_nearest(x, *, size=None, scale_factor=None):
    """``F.interpolate(x, size, scale_factor, mode='nearest')`` (legacy nearest, not 'nearest-exact').

    Source pixel of output pixel ``d``: ``min(floor(d * scale), n_in - 1)`` with ``scale = 1 / scale_factor``
    when a scale factor is given, else ``n_in / n_out`` (float32); sizes ``n_out == n_in`` and
    ``n_out == 2 * n_in`` use ``d`` and ``d // 2`` exactly.

    x: (B, H, W, C) -> (B, out_h, out_w, C).
    """
    return _resample(x, size, scale_factor, _nearest_taps)


_PAD_MODES = ("reflect", "edge")


def pad_hw(x, mode):
    """``jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode)`` for 'reflect' (``nn.ReflectionPad2d(1)``) and 'edge'
    (``nn.ReplicationPad2d(1)``): (B, H, W, C) -> (B, H + 2, W + 2, C).

    One gather of pixels (rows of C values) with the source pixel of each padded pixel from ``np.pad`` of the
    row and column indices: exact copies, like ``jnp.pad``, whose concatenations compile to kernels several
    times larger, and their gradients too; the table passes an optimisation barrier (module docstring).
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
    b, h, w, c = x.shape
    rows = np.pad(np.arange(h, dtype=np.int32), 1, mode=mode)
    cols = np.pad(np.arange(w, dtype=np.int32), 1, mode=mode)
    source = jax.lax.optimization_barrier(jnp.asarray((rows[:, None] * w + cols[None, :]).ravel()))
    out = jnp.take(x.reshape(b, h * w, c), source, axis=1, mode="clip")
    return out.reshape(b, h + 2, w + 2, c)


def _resample(x, size, scale_factor, taps_fn):
    """Apply ``taps_fn(n_in, n_out, scale)`` per axis, width pass first, then height pass."""
    in_hw = (x.shape[_H_AXIS], x.shape[_W_AXIS])
    out_hw, scales = _output_size_and_scales(in_hw, size, scale_factor)
    for axis, n_in, n_out, scale in reversed(list(zip((_H_AXIS, _W_AXIS), in_hw, out_hw, scales))):
        x = _apply_taps(x, axis, taps_fn(n_in, n_out, scale))
    return x


def _output_size_and_scales(in_hw, size, scale_factor):
    """Output (h, w) and the per-axis scale factors handed to the kernel (None when ``size`` is given).

    Mirrors ``F.interpolate`` with recompute_scale_factor=None: ``out = floor(n_in * scale)`` in float64,
    and the user's scale factor (not out / in) is passed on to the kernel.
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("exactly one of size or scale_factor must be given, "
                         f"got size={size!r}, scale_factor={scale_factor!r}")
    if size is not None:
        out_hw = tuple(int(s) for s in _pair(size, "size"))
        scales = (None, None)
    else:
        scales = tuple(float(s) for s in _pair(scale_factor, "scale_factor"))
        out_hw = tuple(math.floor(n * s) for n, s in zip(in_hw, scales))
    if min(out_hw) <= 0:
        raise ValueError(f"output size must be positive, got {out_hw} for input size {in_hw}")
    return out_hw, scales


def _pair(value, name):
    """A scalar or a length-2 sequence -> 2-tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a scalar or a pair (h, w), got {value!r}")
        return tuple(value)
    return (value, value)


def _apply_taps(x, axis, taps):
    """``sum_k take(x, idx_k, axis) * w_k`` summed left to right; ``w_k is None`` means a pure copy.

    All taps are read by one gather (one kernel, and one scatter-add for the gradient); the tables pass
    through an optimisation barrier (see the module docstring).
    taps: tuple of (idx (n_out,) int32, w (n_out,) float32 or None); x: (B, H, W, C).
    """
    if taps is None:
        return x
    shape = [1] * x.ndim
    shape[axis] = -1
    index = np.stack([idx for idx, _ in taps], axis=-1)  # (n_out, taps)
    index, weights = jax.lax.optimization_barrier(
        (jnp.asarray(index), [None if w is None else jnp.asarray(w.reshape(shape), dtype=x.dtype) for _, w in taps]))
    values = jnp.take(x, index, axis=axis, mode="clip")  # (..., n_out, taps, ...): the taps axis after `axis`
    out = None
    for k, w in enumerate(weights):
        term = jax.lax.index_in_dim(values, k, axis=axis + 1, keepdims=False)
        if w is not None:
            term = term * w
        out = term if out is None else out + term
    return out


def _compute_scale(n_in, n_out, align_corners, scale):
    """``area_pixel_compute_scale`` in float32 (``scale`` is the user's scale factor or None)."""
    if align_corners:
        return np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    return _compute_scales_value(n_in, n_out, scale)


def _compute_scales_value(n_in, n_out, scale):
    """``compute_scales_value<float>``: ``float(1.0 / scale)`` (division in double) else ``n_in / n_out``."""
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(n_in) / np.float32(n_out)


def _source_index(scale, n_out, align_corners, cubic):
    """``area_pixel_compute_source_index`` in float32 for every output index -> (n_out,) float32.

    ``scale * (d + 0.5) - 0.5`` is one fused multiply-add in PyTorch's compiled kernels.
    """
    dst = np.arange(n_out, dtype=np.float32)
    if align_corners:
        return scale * dst
    src = fma_float32(scale, dst + np.float32(0.5), np.float32(-0.5))
    return src if cubic else np.maximum(src, np.float32(0))


def _guard_index_and_lambda(real, n_in):
    """``guard_index_and_lambda``: index = min(floor(real), n_in - 1), lambda = clamp(real - index, 0, 1)."""
    index = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    lam = np.clip(real - index.astype(np.float32), np.float32(0), np.float32(1))
    return index, lam


def _linear_taps(n_in, n_out, scale, align_corners):
    """``HelperInterpLinear`` tables: (i0, lambda0), (i1, lambda1); None when the axis is a copy."""
    if n_out == n_in:
        return None
    real = _source_index(_compute_scale(n_in, n_out, align_corners, scale), n_out, align_corners, False)
    i0, lambda1 = _guard_index_and_lambda(real, n_in)
    i1 = i0 + (i0 < n_in - 1)
    lambda0 = np.float32(1) - lambda1
    return ((i0.astype(np.int32), lambda0), (i1.astype(np.int32), lambda1))


def _cubic_taps(n_in, n_out, scale, align_corners):
    """``HelperInterpCubic`` tables: 4 (index, weight) pairs for taps floor(src) - 1 .. floor(src) + 2."""
    real = _source_index(_compute_scale(n_in, n_out, align_corners, scale), n_out, align_corners, True)
    index, t = _guard_index_and_lambda(real, n_in)
    coeffs = _cubic_coefficients(t)
    return tuple((np.clip(index - 1 + j, 0, n_in - 1).astype(np.int32), coeffs[j]) for j in range(4))


def _cubic_coefficients(t):
    """``get_cubic_upsample_coefficients`` in float32: Keys kernel weights of the 4 taps for offset t."""
    one = np.float32(1)
    return (_cubic_convolution2(t + one), _cubic_convolution1(t),
            _cubic_convolution1(one - t), _cubic_convolution2((one - t) + one))


def _cubic_convolution1(x):
    """``((A + 2) * x - (A + 3)) * x * x + 1`` for |x| <= 1, with the inner multiply-add fused."""
    a = _CUBIC_A
    return fma_float32(a + np.float32(2), x, -(a + np.float32(3))) * x * x + np.float32(1)


def _cubic_convolution2(x):
    """``((A * x - 5A) * x + 8A) * x - 4A`` for 1 < |x| < 2, with the two inner multiply-adds fused."""
    a = _CUBIC_A
    return fma_float32(fma_float32(a, x, -(np.float32(5) * a)), x, np.float32(8) * a) * x - np.float32(4) * a


def fma_float32(a, b, c):
    """float32 fused multiply-add ``round(a * b + c)``, emulated in float64 (where ``a * b`` is exact).

    PyTorch's CPU binaries are compiled with floating-point contraction, so some of its float32
    ``a * b + c`` expressions are rounded once; which ones was established by reading back the
    weights of ``F.interpolate`` (and ``F.affine_grid``) on one-hot inputs (torch 2.13, x86-64). Used at trace
    time to build index and weight tables, never on traced values.
    """
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def _nearest_taps(n_in, n_out, scale):
    """``nearest_idx`` table as a single unweighted tap; None when the axis is a copy."""
    if n_out == n_in:
        return None
    if n_out == 2 * n_in:
        index = np.arange(n_out) >> 1
    else:
        dst = np.arange(n_out, dtype=np.float32)
        index = np.minimum(np.floor(dst * _compute_scales_value(n_in, n_out, scale)).astype(np.int64), n_in - 1)
    return ((index.astype(np.int32), None),)
