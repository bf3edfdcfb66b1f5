"""TiO-Depth geometry: disparity bins, reprojection warps and the training masks (spec §2.2, §2.6, §2.7).

Reference: ``models/networks/tio_depth.py`` of the fork (``TiO_Depth.__init__`` bins, ``DepthProjector``,
``DepthTransformer``, ``SelfOccluMask``, ``LapMask``, ``_forward_proj`` and ``_postprocess_outputs``).

Layouts are NHWC: images (B, H, W, C), 1-channel maps (B, H, W, 1), bin volumes (B, H, W, N) with the bins
last. Camera matrices ``K``, ``inv_K``, ``T`` are (B, 4, 4) float32 as the dataset gives them (spec §12.7:
``T`` is used unchanged; only ``inv_K[:, :3, :3]`` is used). Everything is float32 and static-shaped.

Floating point follows PyTorch: the pixel grid is float32 (x = column, y = row, row-major); the camera products
(``inv_K @ pix``, ``K @ T``, ``P @ points``) and the divisions of the reprojection are evaluated in the order and
with the rounding of PyTorch's CPU kernels, so the sampling grids (and the in-view mask on rows 0 and H-1, which
rounding decides) are bit-identical to the original's for the same depth (see :func:`_project_to_grid`); the
per-bin depth is a float32 scalar (PyTorch casts a Python float multiplier to float32 before multiplying);
``grid_sample`` and the resizes are the torch-exact ``ops.warp`` / ``ops.resize`` versions.
SelfOccluMask is an XLA conv with the original's 59 float32 filters: on CPU it reproduced PyTorch's conv bit
for bit on the fixture disparities (eager and jitted), so the > 0.8 / < 0.8 thresholds downstream match.
"""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from .resize import interpolate_bilinear
from .warp import grid_sample

HIGHEST = jax.lax.Precision.HIGHEST

D2D = 400.9  # disparity-to-depth constant of the training yaml (spec §2.1)


# ---------------------------------------------------------------------------------------------------------------
# Disparity bins (spec §2.2)


def disparity_bins(min_disp=2.0, max_disp=300.0, n=49):
    """``volume_dk``: ``d_j = max_disp * (max_disp / min_disp) ** (j / (n - 1) - 1)`` for j = 0..n-1.

    Computed in Python float64, then cast to float32 like ``torch.tensor(out_range)`` (spec §2.2, §12.3 item 16).
    Returns an (n,) float32 numpy array (2.0 ... 300.0 for the defaults).
    """
    return np.asarray(disparity_bins_float64(min_disp, max_disp, n), np.float32)


def bin_depths(d2d=D2D, min_disp=2.0, max_disp=300.0, n=49):
    """``depth_range``: ``[d2d / disp for disp in out_range]`` of the discrete warper (spec §2.2, §2.6.1).

    The division uses the float64 bins (not the float32 ``volume_dk``); the result is cast to float32, which is
    what PyTorch does with a Python-float multiplier of a float32 tensor. Returns (n,) float32 (200.45 ... 1.336).
    """
    return np.asarray([d2d / d for d in disparity_bins_float64(min_disp, max_disp, n)], np.float32)


def disparity_bins_float64(min_disp=2.0, max_disp=300.0, n=49) -> list[float]:
    """The bins as Python floats (the original's ``out_range``), for quantities it derives in double."""
    rel_disp = max_disp / min_disp
    return [max_disp * rel_disp ** (j / (n - 1) - 1) for j in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Reprojection (spec §2.6.1, §2.6.2, §2.7)


def _pixel_coords(h, w):
    """Homogeneous pixel grid (3, h*w) float32: rows x (column index), y (row index), 1; row-major flatten."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="xy")
    return np.stack([xs.reshape(-1), ys.reshape(-1), np.ones(h * w, np.float32)], 0)


def _camera_rays(inv_K, h, w):
    """``inv_K[:, :3, :3] @ [x, y, 1]``: (B, 3, h*w) rays at depth 1 (before scaling by depth)."""
    return _bmm(inv_K[:, :3, :3].astype(jnp.float32), _pixel_coords(h, w)[None])


def _projection_matrix(K, T):
    """``(K @ T)[:, :3, :]``: (B, 3, 4)."""
    return _bmm(K.astype(jnp.float32), T.astype(jnp.float32))[:, :3, :]


def _project_to_grid(points, P, h, w):
    """Camera points (B, 3, h*w) -> normalised sampling grid (B, h, w, 2) of (x, y).

    ``p = P @ [points; 1]``; ``(u, v) = p_xy / (p_z + 1e-8)``; ``g = (u / (w - 1) - 0.5) * 2``, same for v with
    ``h - 1``: PyTorch's operations in its order, each rounded where PyTorch's CPU kernels round (see
    :func:`_bmm` and :func:`_divide`), so the grid is bit-identical to the original's for the same inputs. This
    decides the in-view mask on image rows 0 and H-1, where the exact y is 0 or H-1 and the float32 one lands
    an ulp inside or outside [-1, 1].
    """
    p = P[..., None]  # (B, 3, 4, 1)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]  # (B, h*w) each
    u, v, d = (_sum_of_products([(p[:, i, 0], x), (p[:, i, 1], y), (p[:, i, 2], z), (p[:, i, 3], 1)])
               for i in range(3))
    d = d + np.float32(1e-8)
    gx = (_divide(u / d, np.float32(w - 1)) - np.float32(0.5)) * np.float32(2)
    gy = (_divide(v / d, np.float32(h - 1)) - np.float32(0.5)) * np.float32(2)
    return jnp.stack([gx, gy], axis=-1).reshape(-1, h, w, 2)


# PyTorch's float32 CPU arithmetic under XLA. The original's camera products are tiny ``torch.matmul``s, and its
# normalisation divides twice. torch 2.13's CPU ``bmm`` rounds every product before adding it and sums over k in
# ascending order (``baddbmm_cpu_kernel``'s ``acc += a * b`` loop for the 4x4 ``K @ T``, MKL's batched sgemm for
# the (3, H*W) products: both matched the unfused sequential sum bit for bit, and no FMA order); its divisions
# are IEEE divisions. Written as plain jnp, XLA's CPU compiler evaluates this otherwise: LLVM contracts a product
# followed by a sum into one FMA, and the algebraic simplifier turns a division by a constant (or by a broadcast)
# into a multiplication by the reciprocal and ``(a / b) / c`` into ``a / (b * c)``. Each moves the grid by about
# an ulp, which flips the in-view mask on rows 0 and H-1.
# ``_rounded`` (a select that only passes a NaN on) is an exact identity neither of them can look through;
# tests/test_geometry.py checks the jitted grids bit for bit (on CPU; XLA's GPU compiler was not checked).


def _rounded(x):
    """``x`` unchanged (a NaN stays NaN), materialised as a rounded float32 value that XLA cannot fuse into
    an FMA or rewrite algebraically."""
    return jnp.where(jnp.isnan(x), np.float32(np.nan), x)


def _bmm(a, x):
    """``torch.matmul(a, x)`` for float32 a (B, I, K) and x (B or 1, K, N) -> (B, I, N), summed like PyTorch's CPU
    kernels (:func:`_sum_of_products`)."""
    return _sum_of_products([(a[:, :, k, None], x[:, k, None, :]) for k in range(a.shape[2])])


def _sum_of_products(pairs):
    """``sum_k a_k * b_k`` as PyTorch's CPU kernels compute it: ``((a_0 b_0 + a_1 b_1) + a_2 b_2) + ...``, each
    product rounded to float32 before it is added."""
    return functools.reduce(operator.add, [_rounded(a * b) for a, b in pairs])


def _divide(a, b):
    """``a / b`` with one IEEE division per element, for an ``a`` that may itself be a quotient and a constant
    ``b``: the divisor is a select that is ``b`` wherever the quotient is not NaN anyway, so XLA sees neither a
    constant divisor nor a quotient to reassociate (see :func:`_rounded`)."""
    a = _rounded(a)
    return a / jnp.where(jnp.isnan(a), a, b)


def depth_to_grid(depth, inv_K, T, K):
    """DepthProjector's sampling grid for a per-pixel depth (spec §2.7).

    depth: (B, H, W, 1); inv_K, T, K: (B, 4, 4) -> grid (B, H, W, 2) normalised (x, y), align_corners=True.
    Differentiable w.r.t. depth.
    """
    b, h, w, _ = depth.shape
    points = depth.reshape(b, 1, h * w) * _camera_rays(inv_K, h, w)
    return _project_to_grid(points, _projection_matrix(K, T), h, w)


def in_view_mask(grid):
    """1.0 where both normalised coordinates lie in [-1, 1], else 0.0: (B, H, W, 2) -> (B, H, W, 1)."""
    inside = (grid >= -1) & (grid <= 1)
    return jnp.all(inside, axis=-1, keepdims=True).astype(jnp.float32)


def project_image(depth, inv_K, T, K, img, *, with_mask=False):
    """``DepthProjector(depth, inv_K, T, K, img, is_mask)`` (spec §2.6.2 steps 2-3, §2.7).

    Back-projects every target pixel with ``depth``, moves it by ``T``, projects it with ``K`` and samples ``img``
    there (bilinear, padding 'border', align_corners=True). Gradients flow into ``depth`` through the sampling
    coordinates (and into ``img``).

    depth: (B, H, W, 1); inv_K, T, K: (B, 4, 4); img: (B, H, W, C).
    Returns (warped (B, H, W, C), mask (B, H, W, 1) or None); the mask (``edge_mask``) is 1 where the sample
    lies inside the image (both normalised coordinates in [-1, 1]).
    """
    grid = depth_to_grid(depth, inv_K, T, K)
    warped = grid_sample(img, grid, padding_mode="border", align_corners=True)
    return warped, (in_view_mask(grid) if with_mask else None)


def _bin_grid(rays, P, depth, h, w):
    """DepthTransformer's grid of one bin: rays (B, 3, h*w), P (B, 3, 4), scalar float32 depth -> (B, h, w, 2)."""
    return _project_to_grid(depth * rays, P, h, w)


def _bin_setup(depths, inv_K, T, K, h, w):
    """Constant (stop_gradient) rays and projection matrix, and the float32 bin depths."""
    rays = jax.lax.stop_gradient(_camera_rays(inv_K, h, w))
    P = jax.lax.stop_gradient(_projection_matrix(K, T))
    return rays, P, jax.lax.stop_gradient(jnp.asarray(depths, jnp.float32))


def warp_volume(logits, depths, inv_K, T, K):
    """``DepthTransformer.get_warped_volume`` (spec §2.6.1): bin j of ``logits`` sampled at bin j's grid.

    Bilinear, padding 'zeros', align_corners=True: out-of-view logits become exactly 0. Grids are constants;
    gradients flow into the logits. logits: (B, H, W, N); depths: (N,) -> (B, H, W, N).
    """
    _, h, w, _ = logits.shape
    return _warp_logits(logits, *_bin_setup(depths, inv_K, T, K, h, w))


def _warp_logits(logits, rays, P, depths):
    """Bin j of logits (B, H, W, N) sampled at bin j's grid (zeros padding), one bin at a time -> (B, H, W, N)."""
    _, h, w, _ = logits.shape

    def one_bin(args):
        channel, depth = args  # (B, H, W), scalar
        grid = _bin_grid(rays, P, depth, h, w)
        return grid_sample(channel[..., None], grid, padding_mode="zeros", align_corners=True)[..., 0]

    return jnp.moveaxis(jax.lax.map(one_bin, (jnp.moveaxis(logits, -1, 0), depths)), 0, -1)


def warp_frame(img, depths, inv_K, T, K):
    """``DepthTransformer.get_warped_frame`` (spec §2.6.1): ``img`` sampled at every bin's grid.

    Bilinear, padding 'border', align_corners=True; grids are constants. img: (B, H, W, C); depths: (N,) ->
    (B, H, W, N, C).
    """
    _, h, w, _ = img.shape
    rays, P, depths = _bin_setup(depths, inv_K, T, K, h, w)
    warped = jax.lax.map(
        lambda d: grid_sample(img, _bin_grid(rays, P, d, h, w), padding_mode="border", align_corners=True), depths)
    return jnp.moveaxis(warped, 0, 3)  # (N, B, H, W, C) -> (B, H, W, N, C)


def discrete_synthesis(logits, img, depths, inv_K, T, K):
    """``mono_disproj_img``: ``sum_j softmax_j(warp_volume(logits))_j * warp_frame(img)_j`` (spec §2.6.1).

    logits: (B, H, W, N) source-side bin logits; img: (B, H, W, C) source image; depths: (N,) bin depths
    (:func:`bin_depths`); inv_K, T, K: (B, 4, 4). Returns the synthesised target image (B, H, W, C).

    Memory (spec §12.9): a custom VJP. The forward keeps the warped logits' softmax P (B, H, W, N) and
    accumulates the image sum bin by bin (``fori_loop``), so the (B, H, W, N, C) warped image volume is never
    materialised. The backward loops over the bins again, re-warping the image of bin j and using
    ``d synth / d l_j = P_j * <g, I_j - synth>`` (the softmax Jacobian), then the adjoint of the zeros-padded
    warp of logit channel j. Gradients flow into ``logits`` and ``img``; the grids (cameras, depths) get none.
    The sum over bins runs j = 0..N-1 in order like PyTorch's ``.sum(dim=2)``. The warp and the softmax run
    in float32 whatever the logits' dtype (bfloat16 compute); their gradient comes back in that dtype.
    """
    _, h, w, _ = logits.shape
    rays, P, depths = _bin_setup(depths, inv_K, T, K, h, w)
    return _discrete_synthesis(logits.astype(jnp.float32), img, rays, P, depths)


@jax.custom_vjp
def _discrete_synthesis(logits, img, rays, P, depths):
    return _discrete_synthesis_fwd(logits, img, rays, P, depths)[0]


def _discrete_synthesis_fwd(logits, img, rays, P, depths):
    _, h, w, n = logits.shape
    prob = jax.nn.softmax(_warp_logits(logits, rays, P, depths), axis=-1)  # (B, H, W, N)

    def accumulate(j, acc):
        grid = _bin_grid(rays, P, depths[j], h, w)
        frame = grid_sample(img, grid, padding_mode="border", align_corners=True)  # (B, H, W, C)
        p_j = jax.lax.dynamic_index_in_dim(prob, j, axis=3, keepdims=True)  # (B, H, W, 1)
        return acc + p_j * frame

    synth = jax.lax.fori_loop(0, n, accumulate, jnp.zeros(img.shape, img.dtype))
    return synth, (logits, img, rays, P, depths, prob, synth)


def _discrete_synthesis_bwd(residuals, g):
    logits, img, rays, P, depths, prob, synth = residuals
    _, h, w, n = logits.shape
    g_dot_synth = jnp.sum(g * synth, axis=-1, keepdims=True)  # (B, H, W, 1)

    def body(j, carry):
        g_logits, g_img = carry
        grid = _bin_grid(rays, P, depths[j], h, w)
        frame, frame_vjp = jax.vjp(
            lambda x: grid_sample(x, grid, padding_mode="border", align_corners=True), img)
        p_j = jax.lax.dynamic_index_in_dim(prob, j, axis=3, keepdims=True)  # (B, H, W, 1)
        g_img = g_img + frame_vjp(p_j * g)[0]
        g_warped = p_j * (jnp.sum(g * frame, axis=-1, keepdims=True) - g_dot_synth)  # (B, H, W, 1)
        channel = jax.lax.dynamic_index_in_dim(logits, j, axis=3, keepdims=True)
        _, logit_vjp = jax.vjp(lambda x: grid_sample(x, grid, padding_mode="zeros", align_corners=True), channel)
        g_logits = jax.lax.dynamic_update_index_in_dim(g_logits, logit_vjp(g_warped)[0], j, axis=3)
        return g_logits, g_img

    g_logits, g_img = jax.lax.fori_loop(0, n, body, (jnp.zeros_like(logits), jnp.zeros_like(img)))
    return g_logits, g_img, jnp.zeros_like(rays), jnp.zeros_like(P), jnp.zeros_like(depths)


_discrete_synthesis.defvjp(_discrete_synthesis_fwd, _discrete_synthesis_bwd)


# ---------------------------------------------------------------------------------------------------------------
# Masks (spec §2.6.2 step 4, §2.6.3, §2.7)


@functools.lru_cache(maxsize=None)
def _self_occlusion_filters(min_disp, max_disp):
    """SelfOccluMask's conv weights as HWIO (3, max_disp + 2, 1, max_disp - min_disp) and bias (filters,).

    Filter i - min_disp (i in [min_disp, max_disp)): float32(1/6) on columns 0 and 1, float32(-1/3) on column
    i + 2 (all three rows); bias i + 1 + min_disp.
    """
    n = max_disp - min_disp
    weights = np.zeros((n, 1, 3, max_disp + 2), np.float32)  # OIHW as in the original
    for i in range(min_disp, max_disp):
        weights[i - min_disp, 0, :, 0:2] = 1 / 6
        weights[i - min_disp, 0, :, i + 2:i + 3] = -1 / 3
    bias = np.arange(min_disp, max_disp, dtype=np.float32) + 1 + min_disp
    return weights.transpose(2, 3, 1, 0), bias


def _occlusion_mask_left(disp, min_disp, max_disp):
    """``SelfOccluMask.computeMask(disp, 'l')``: clamp(min_i |conv_i(pad(disp)) + bias_i|, 0, 1).

    disp: (B, H, W, 1) -> (B, H, W, 1). Replicate padding (top 1, bottom 1, left 0, right max_disp + 1).
    """
    weights, bias = _self_occlusion_filters(min_disp, max_disp)
    padded = jnp.pad(disp, ((0, 0), (1, 1), (0, max_disp + 1), (0, 0)), mode="edge")
    out = jax.lax.conv_general_dilated(padded, jnp.asarray(weights), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    out = jnp.abs(out + bias)  # (B, H, W, filters)
    return jnp.clip(jnp.min(out, axis=-1, keepdims=True), 0, 1)


def self_occlusion_mask(disp, baseline, min_disp=1, max_disp=60):
    """``SelfOccluMask(min_disp, max_disp)(disp, baseline)`` (spec §2.7, §12.5): 1 = visible in the other view.

    disp: (B, H, W, 1) disparity in pixels; baseline: (B,) whose sign picks the direction per sample:
    < 0 -> 'l' (looks for larger disparities to the right), > 0 -> 'r' (the mirrored mask), == 0 -> zeros.
    Returns (B, H, W, 1) in [0, 1]; no gradient. Only one direction is computed per sample (the 'r' samples
    are flipped before and after the same 'l' computation).
    """
    disp = jax.lax.stop_gradient(disp).astype(jnp.float32)
    baseline = jnp.asarray(baseline).reshape(-1, 1, 1, 1)
    right = baseline > 0
    flipped = jnp.where(right, disp[:, :, ::-1, :], disp)
    mask = _occlusion_mask_left(flipped, min_disp, max_disp)
    mask = jnp.where(right, mask[:, :, ::-1, :], mask)
    return jnp.where(baseline != 0, mask, jnp.zeros_like(mask))


def lap_plane_mask(depth, thres=0.13):
    """``LapMask(thres)(depth)`` (spec §2.6.3 step 2) -> (edge (B, H, W, 1), plane (B, H, W, 1)); no gradient.

    n = depth / mean_W(mean_H(depth)); edge = max_pool_3x3(|laplacian_3x3(n)|) (conv zero padding 1, pool
    stride 1 padding 1 with -inf); plane = 1 - clamp(edge, 0, thres) / thres (1 on smooth regions).
    The 3x3 conv is written as its 9 shifted terms summed in row-major kernel order, as PyTorch's CPU conv
    sums them; the products (by -1 and 8) are exact, so the Laplacian equals PyTorch's for the same ``n``
    (``n`` itself can differ by an ulp: XLA sums the mean in another order and, under jit, divides by it as a
    multiplication by its reciprocal).
    """
    depth = jax.lax.stop_gradient(depth).astype(jnp.float32)
    _, h, w, _ = depth.shape
    mean = jnp.mean(jnp.mean(depth, axis=1, keepdims=True), axis=2, keepdims=True)  # (B, 1, 1, 1)
    padded = jnp.pad(depth / mean, ((0, 0), (1, 1), (1, 1), (0, 0)))
    lap = None
    for dy in range(3):
        for dx in range(3):
            weight = np.float32(8 if (dy, dx) == (1, 1) else -1)
            term = weight * padded[:, dy:dy + h, dx:dx + w, :]
            lap = term if lap is None else lap + term
    edge = jax.lax.reduce_window(jnp.abs(lap), -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
    thres = np.float32(thres)
    # Saturated pixels are set to exactly 0 (PyTorch's t / t = 1): under jit XLA rewrites the division by the
    # constant into a multiplication by its reciprocal, which would leave ~3e-9 there.
    plane = jnp.where(edge >= thres, 0, 1 - jnp.clip(edge, 0, thres) / thres)
    return edge, plane


def occlusion_mask_downscaled(disp, baseline):
    """The ``downscale_occ`` occlusion map (spec §2.6.2 step 4, §2.6.3 step 1), NOT thresholded.

    m = disp / 2 resized (bilinear, align_corners=False) to (H//2, W//2); ``self_occlusion_mask(m, baseline)``;
    resized back to (2 * (H//2), 2 * (W//2)). Stage 2 passes ``baseline = direct * -1`` and keeps ``> 0.8``;
    stage 3 passes ``direct * +1`` and overrides the plane mask where it is ``< 0.8``.
    disp: (B, H, W, 1); baseline: (B,) -> (B, 2*(H//2), 2*(W//2), 1); no gradient.
    """
    disp = jax.lax.stop_gradient(disp)
    _, h, w, _ = disp.shape
    m = interpolate_bilinear(disp / 2, size=(h // 2, w // 2), align_corners=False)
    occ = self_occlusion_mask(m, baseline)
    return interpolate_bilinear(occ, size=(2 * (h // 2), 2 * (w // 2)), align_corners=False)


def stereo_visible_mask(mono_disp, direct):
    """``mono_occ_mask_s`` (spec §2.6.2 step 4): ``occlusion_mask_downscaled(mono_disp, -direct) > 0.8`` as
    float32 (1 = visible in the other view). mono_disp: (B, H, W, 1); direct: (B,) -> (B, H, W, 1)."""
    occ = occlusion_mask_downscaled(mono_disp, jnp.asarray(direct) * -1)
    return (occ > 0.8).astype(jnp.float32)


def fused_target(color, mono_proj, occ_mask, edge_mask):
    """Stage-2 photometric target (spec §2.6.2 step 5): with V = occ * edge,
    ``fused_occ_color = V * color + (1 - V) * mono_proj`` and ``invalid_mask = 1 - V``.

    color, mono_proj: (B, H, W, C); occ_mask, edge_mask: (B, H, W, 1). Returns (fused, invalid_mask); constants.
    """
    color, mono_proj, occ_mask, edge_mask = jax.lax.stop_gradient((color, mono_proj, occ_mask, edge_mask))
    visible = occ_mask * edge_mask
    return visible * color + (1 - visible) * mono_proj, 1 - visible


def occlap_fusion(mono_depth, stereo_depth, stereo_disp, mono_pvolume, stereo_pvolume, direct, d2d=D2D):
    """Stage-3 'OccLap' fusion targets (spec §2.6.3 steps 1-5); all inputs are treated as constants.

    occ = occlusion_mask_downscaled(stereo_disp, direct * +1); plane = LapMask(stereo_depth) with
    ``plane[occ < 0.8] = 1``; fuse_depth = stereo * plane + mono * (1 - plane); fuse_disp = d2d / fuse_depth;
    fuse_pvolume = mono_pvolume * (1 - plane) + stereo_pvolume * plane.

    mono_depth, stereo_depth, stereo_disp: (B, H, W, 1); mono_pvolume, stereo_pvolume: (B, H, W, N) or None;
    direct: (B,). Returns a dict with 'plane_mask', 'fuse_depth', 'fuse_disp' (B, H, W, 1) and 'fuse_pvolume'
    (B, H, W, N; None when the volumes are None).
    """
    mono_depth, stereo_depth, stereo_disp, mono_pvolume, stereo_pvolume = jax.lax.stop_gradient(
        (mono_depth, stereo_depth, stereo_disp, mono_pvolume, stereo_pvolume))
    occ = occlusion_mask_downscaled(stereo_disp, jnp.asarray(direct) * 1)
    _, plane = lap_plane_mask(stereo_depth)
    plane = jnp.where(occ < 0.8, jnp.ones_like(plane), plane)
    fuse_depth = stereo_depth * plane + mono_depth * (1 - plane)
    out = {"plane_mask": plane, "fuse_depth": fuse_depth, "fuse_disp": np.float32(d2d) / fuse_depth,
           "fuse_pvolume": None}
    if mono_pvolume is not None and stereo_pvolume is not None:
        out["fuse_pvolume"] = mono_pvolume * (1 - plane) + stereo_pvolume * plane
    return out
