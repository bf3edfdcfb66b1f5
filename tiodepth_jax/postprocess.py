"""Test-time post-processing of monocular depth (spec §8.3): 'fpp', 'gpp' and 'mspp'.

Each method runs the network a second time on a transformed copy of ``color_s`` and blends the two
predictions as *inverse depths*:

* 'fpp'  (flip): second pass on the mirrored image; inv = (inv_d + inv_flip) / 2.
* 'gpp'  (Monodepth): second pass on the mirrored image; with l = linspace(0, 1, W),
  m_l = 1 - clip(20 (l - 0.05), 0, 1) and m_r = mirror(m_l):
  inv = m_r inv_d + m_l inv_flip + (1 - m_l - m_r) (inv_d + inv_flip) / 2.
* 'mspp' (FAL-Net): second pass on the mirrored image downscaled by 2/3 (bilinear, align_corners=True, output
  size floor(H * 2/3) x floor(W * 2/3) as ``F.interpolate(scale_factor=2/3)``); its depth is upscaled back to
  H x W with legacy nearest, multiplied by 2/3, and mirrored; with n = min(inv_d / (P95(inv_d) + 1e-6), 1):
  inv = (1 - n) inv_d + n inv_flip.

inv_flip is always the second pass's inverse depth brought back to the first pass's frame (mirrored back,
and for 'mspp' resized and scaled). The result is depth = 1 / inv.

Arrays are NHWC: depths and inverse depths (B, H, W, C) (the network's (B, H, W, 1) maps), images
(B, H, W, 3); the functions are jax.numpy code that can run inside ``jax.jit``. P95 is numpy's default
(linear) percentile, taken per image over H, W and C (the original evaluates batches of 1 and takes it over
the whole batch); it is computed in float32, the original in numpy float32 plus a float64 1e-6.
"""

import jax.numpy as jnp
import numpy as np

from tiodepth_jax.ops.resize import interpolate_bilinear, interpolate_nearest

METHODS = ("fpp", "gpp", "mspp")
MSPP_SCALE = 2 / 3          # the FAL-Net second pass runs at 2/3 of the image size
MSPP_PERCENTILE = 95.0


def mirror(x):
    """Left-right mirror of NHWC arrays: (B, H, W, C) -> (B, H, W, C)."""
    return x[:, :, ::-1]


def mspp_size(height: int, width: int) -> tuple[int, int]:
    """Size of the 'mspp' second pass: (floor(H * 2/3), floor(W * 2/3)) in float64, as F.interpolate computes it."""
    return int(np.floor(height * MSPP_SCALE)), int(np.floor(width * MSPP_SCALE))


def second_pass_image(method: str, image):
    """The image the second pass runs on: ``image`` (B, H, W, 3) mirrored, for 'mspp' also downscaled to
    :func:`mspp_size` with bilinear align_corners=True interpolation (mirror first, then resize, as the
    original)."""
    _check_method(method)
    flipped = mirror(image)
    if method == "mspp":
        return interpolate_bilinear(flipped, size=mspp_size(*image.shape[1:3]), align_corners=True)
    return flipped


def second_pass_inverse_depth(method: str, depth_second, size: tuple[int, int]):
    """Inverse depth of the second pass in the first pass's frame.

    depth_second: (B, h, w, C) depth predicted on :func:`second_pass_image`; size: the first pass's (H, W).
    'fpp' / 'gpp': 1 / mirror(depth_second) (h, w = H, W). 'mspp': 1 / mirror(2/3 * nearest(depth_second,
    (H, W))) (upscaled, scaled, then mirrored, as the original). Returns (B, H, W, C).
    """
    _check_method(method)
    if method == "mspp":
        depth_second = MSPP_SCALE * interpolate_nearest(depth_second, size=tuple(size))
    elif tuple(depth_second.shape[1:3]) != tuple(size):
        raise ValueError(f"'{method}' needs the second pass at the first pass's size {tuple(size)}, "
                         f"got {tuple(depth_second.shape[1:3])}")
    return 1.0 / mirror(depth_second)


def fpp_blend(inv, inv_flip):
    """Flip post-processing: the mean of the two inverse depths (B, H, W, C)."""
    return (inv + inv_flip) / 2


def gpp_masks(width: int) -> tuple[np.ndarray, np.ndarray]:
    """Monodepth's edge masks (m_l, m_r), each (W,) float32 (computed in float64 and rounded, as the original).

    m_l = 1 - clip(20 (l - 0.05), 0, 1) with l = linspace(0, 1, W): 1 on the leftmost ~5% of the columns,
    falling linearly to 0 at ~10%; m_r is m_l mirrored.
    """
    left = 1.0 - np.clip(20 * (np.linspace(0, 1, width) - 0.05), 0, 1)
    return left.astype(np.float32), left[::-1].astype(np.float32)


def gpp_blend(inv, inv_flip):
    """Monodepth post-processing of inverse depths (B, H, W, C): the first pass's inverse depth near the right
    edge, the mirrored pass's near the left edge (where the first pass sees a disocclusion), their mean
    elsewhere."""
    m_l, m_r = gpp_masks(inv.shape[2])
    m_l, m_r = jnp.asarray(m_l)[:, None], jnp.asarray(m_r)[:, None]  # (W, 1): broadcast over (B, H, W, C)
    return m_r * inv + m_l * inv_flip + (1.0 - m_l - m_r) * (0.5 * (inv + inv_flip))


def mspp_blend(inv, inv_flip):
    """FAL-Net post-processing of inverse depths (B, H, W, C): n = min(inv / (P95(inv) + 1e-6), 1) per image;
    (1 - n) inv + n inv_flip, so the nearest 5% of the pixels come from the 2/3-scale mirrored pass."""
    p95 = jnp.percentile(inv, MSPP_PERCENTILE, axis=(1, 2, 3), keepdims=True)
    norm = jnp.minimum(inv / (p95 + 1e-6), 1.0)
    return (1 - norm) * inv + norm * inv_flip


BLENDS = {"fpp": fpp_blend, "gpp": gpp_blend, "mspp": mspp_blend}


def post_process(method: str, depth, depth_second):
    """Post-processed depth (B, H, W, C) from the first pass's ``depth`` (B, H, W, C) and the second pass's
    ``depth_second`` (the network's depth on :func:`second_pass_image`): 1 / blend(1 / depth, inv_flip)."""
    inv_flip = second_pass_inverse_depth(method, depth_second, depth.shape[1:3])
    return 1.0 / BLENDS[method](1.0 / depth, inv_flip)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown post-processing {method!r}; known: {', '.join(METHODS)}")
