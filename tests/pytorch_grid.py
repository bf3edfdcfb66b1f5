"""DepthProjector's reprojection (spec §2.7) in PyTorch's float32 CPU arithmetic, written in numpy.

numpy's ufuncs neither fuse a product into an FMA nor reassociate: every ``matmul`` of the original is here the
k-ascending sum of rounded products (torch 2.13's CPU ``bmm``), every division one IEEE division, in the
original's order. This is the reference that the jitted grids (tests/test_geometry.py) and the in-view masks of
the full training forward (tests/parity_tio.py) are held to bit for bit: on image rows 0 and H-1 the exact
reprojected y is 0 or H-1 whatever the depth, and which side of +-1 its float32 value lands on is decided by
this rounding and by the last bits of the depth.
"""

from __future__ import annotations

import numpy as np


def _bmm(a, x):
    out = a[:, :, :1] * x[:, :1]
    for k in range(1, a.shape[2]):
        out = out + a[:, :, k:k + 1] * x[:, k:k + 1]
    return out


def grid_in_pytorch_order(depth, inv_K, T, K) -> np.ndarray:
    """The normalised sampling grid (B, H, W, 2) of (x, y) for depth (B, H, W, 1) and cameras (B, 4, 4)."""
    depth, inv_K, T, K = (np.asarray(a, np.float32) for a in (depth, inv_K, T, K))
    b, h, w, _ = depth.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="xy")
    pix = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w, np.float32)])[None]
    points = depth.reshape(b, 1, h * w) * _bmm(inv_K[:, :3, :3], pix)
    p = _bmm(_bmm(K, T)[:, :3], np.concatenate([points, np.ones((b, 1, h * w), np.float32)], 1))
    uv = p[:, :2] / (p[:, 2:] + np.float32(1e-8))
    grid = (uv / np.float32([w - 1, h - 1])[None, :, None] - np.float32(0.5)) * np.float32(2)
    return grid.reshape(b, 2, h, w).transpose(0, 2, 3, 1)


def in_view_in_pytorch_order(depth, inv_K, T, K) -> np.ndarray:
    """DepthProjector's ``is_mask`` output: 1.0 where both coordinates lie in [-1, 1] -> (B, H, W, 1) float32."""
    grid = grid_in_pytorch_order(depth, inv_K, T, K)
    return np.all((grid >= -1) & (grid <= 1), axis=-1, keepdims=True).astype(np.float32)
