"""tiodepth_jax.ops.geometry: analytic cases, a PyTorch cross-check of the discrete warp and fixture parity.

Analytic cases use a pinhole camera whose arithmetic is exact in float32 (focal length 64, principal point on
integers, W - 1 and H - 1 powers of two), so a constant disparity of s pixels is an exact s-pixel shift.
Fixture parity runs on every TiO-Depth set (../shared/fixtures/README.md; directory from $TIODEPTH_FIXTURES; test
ids name the set) at its training size: the ops are fed the reference's stage-2 predictions where those are stored
whole (isolating the ops from the network); a prediction stored only sampled is replaced by our own stage output,
and the results are then compared on the reference's samples with the tolerances of our whole pipeline.
Run with `pytest -s` to see the measured errors and flip counts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.parity import FixtureSet, nchw, rel_l2, tio_params
from tests.parity_tio import OCC_MARGIN
from tests.pytorch_grid import grid_in_pytorch_order, in_view_in_pytorch_order
from tiodepth_jax.ops import geometry as G

# Exact camera: K = [[F, 0, CX], [0, F, CY], [0, 0, 1]], baseline B_; image H x W with W - 1, H - 1 powers of 2.
F_, CX, CY, BASELINE = 64.0, 16.0, 4.0, 0.5
H, W = 9, 33


def _cameras(tx_signs):
    """K, inv_K, T (B, 4, 4) float32 for per-sample T[0, 3] = sign * BASELINE."""
    k = np.eye(4, dtype=np.float32)
    k[0, 0] = k[1, 1] = F_
    k[0, 2], k[1, 2] = CX, CY
    inv_k = np.linalg.inv(k.astype(np.float64)).astype(np.float32)
    t = np.repeat(np.eye(4, dtype=np.float32)[None], len(tx_signs), axis=0)
    t[:, 0, 3] = np.asarray(tx_signs, np.float32) * BASELINE
    batch = len(tx_signs)
    return np.repeat(k[None], batch, 0), np.repeat(inv_k[None], batch, 0), t


def _image(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _shift_columns(img, s):
    """img shifted right by s >= 0 (out[x] = img[x - s]) or left by -s, with the border column replicated."""
    cols = np.clip(np.arange(img.shape[2]) - s, 0, img.shape[2] - 1)
    return img[:, :, cols]


# ---------------------------------------------------------------------------------------------------------------
# Bins


def test_disparity_bins_and_depths():
    bins = G.disparity_bins()
    assert bins.dtype == np.float32 and bins.shape == (49,)
    assert bins[0] == 2.0 and bins[-1] == 300.0
    np.testing.assert_allclose(bins[1] / bins[0], 150 ** (1 / 48), rtol=1e-6)
    depths = G.bin_depths()
    np.testing.assert_array_equal(depths, np.float32([400.9 / (300 * 150 ** (j / 48 - 1)) for j in range(49)]))
    np.testing.assert_allclose(depths[[0, -1]], [200.45, 400.9 / 300], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# (a) Constant disparity = exact pixel shift; in-view mask


@pytest.mark.parametrize("s", [1, 4])
def test_project_image_constant_disparity_is_a_shift(s):
    # sample 0: left target (T[0,3] = -b): u' = u - s; sample 1: right target (+b): u' = u + s
    K, inv_K, T = _cameras([-1, +1])
    depth = np.full((2, H, W, 1), F_ * BASELINE / s, np.float32)
    img = _image((2, H, W, 3))
    warped, mask = jax.jit(functools.partial(G.project_image, with_mask=True))(depth, inv_K, T, K, img)
    warped, mask = np.asarray(warped), np.asarray(mask)[..., 0]
    # every column, border ones included (replicated), is exact
    np.testing.assert_array_equal(warped[0], _shift_columns(img[:1], s)[0])
    np.testing.assert_array_equal(warped[1], _shift_columns(img[1:], -s)[0])
    cols = np.arange(W)
    np.testing.assert_array_equal(mask[0], np.broadcast_to(cols >= s, (H, W)).astype(np.float32))
    np.testing.assert_array_equal(mask[1], np.broadcast_to(cols <= W - 1 - s, (H, W)).astype(np.float32))
    _, no_mask = G.project_image(depth, inv_K, T, K, img)
    assert no_mask is None


def test_grid_is_pytorch_arithmetic_bit_for_bit():
    """Skewed intrinsics, a rotation and a 3D translation, random depths: the grid equals PyTorch's float32
    arithmetic bit for bit, jitted and in a loop body (where the discrete warp computes its bin grids)."""
    rng = np.random.default_rng(3)
    k = np.eye(4, dtype=np.float32)
    k[:2, :3] = [[41.3, 0.7, 15.1], [0, 39.9, 6.2]]
    angle = np.float32(0.05)
    t = np.eye(4, dtype=np.float32)
    t[[0, 0, 2, 2], [0, 2, 0, 2]] = np.cos(angle), np.sin(angle), -np.sin(angle), np.cos(angle)
    t[:3, 3] = [-0.54, 0.02, 0.1]
    K, T = np.repeat(k[None], 2, 0), np.repeat(t[None], 2, 0)
    inv_K = np.linalg.inv(K.astype(np.float64)).astype(np.float32)
    depth = rng.uniform(0.5, 80, (3, 2, 13, 29, 1)).astype(np.float32)
    expected = [grid_in_pytorch_order(d, inv_K, T, K) for d in depth]
    np.testing.assert_array_equal(jax.jit(G.depth_to_grid)(depth[0], inv_K, T, K), expected[0])
    looped = jax.jit(lambda ds: jax.lax.map(lambda d: G.depth_to_grid(d, inv_K, T, K), ds))(depth)
    np.testing.assert_array_equal(looped, np.stack(expected))


def test_numpy_grid_is_torch_bit_for_bit():
    """The numpy statement (tests.pytorch_grid, the reference of the fixture tests' in-view masks) equals
    DepthProjector's arithmetic run in torch itself (spec §2.7: matmul, scale by depth, matmul by (K @ T)[:3],
    divide by z + 1e-8, divide x and y by W-1 and H-1, (g - 0.5) * 2), grid and in-view mask bit for bit: on the
    fixtures' camera (KITTI K scaled to 1.5x the 84x280 crop, T[0,3] = -+0.54), where rows 0 and H-1 are decided
    by rounding, and on a skewed, rotated one."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    h, w = 84, 280
    kitti = np.float64([[721.54, 0, 609.56, 0], [0, 721.54, 172.85, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    kitti[0] *= 1.5 * w / 1242
    kitti[1] *= 1.5 * h / 375
    skewed = np.eye(4)
    skewed[:2, :3] = [[41.3, 0.7, 15.1], [0, 39.9, 6.2]]
    rot = np.eye(4)
    rot[[0, 0, 2, 2], [0, 2, 0, 2]] = np.cos(0.05), np.sin(0.05), -np.sin(0.05), np.cos(0.05)
    rot[:3, 3] = [-0.54, 0.02, 0.1]
    shift = [np.eye(4), np.eye(4)]
    shift[0][0, 3], shift[1][0, 3] = -0.54, 0.54
    masks = []
    for k, t in ((kitti, np.stack(shift)), (skewed, np.stack([rot, rot]))):
        K = np.repeat(k[None], 2, 0).astype(np.float32)
        inv_K = np.linalg.pinv(K.astype(np.float64)).astype(np.float32)
        T = t.astype(np.float32)
        depth = np.exp(rng.uniform(np.log(1.5), np.log(200), (2, h, w, 1))).astype(np.float32)

        xs, ys = np.meshgrid(range(w), range(h), indexing="xy")
        pix = torch.from_numpy(np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)]).astype(np.float32))[None]
        K_t, inv_K_t, T_t = map(torch.from_numpy, (K, inv_K, T))
        cam = torch.from_numpy(depth).view(2, 1, -1) * torch.matmul(inv_K_t[:, :3, :3], pix)
        cam = torch.cat([cam, torch.ones(2, 1, h * w)], 1)
        pts = torch.matmul(torch.matmul(K_t, T_t)[:, :3, :], cam)
        uv = (pts[:, :2, :] / (pts[:, 2, :].unsqueeze(1) + 1e-8)).view(2, 2, h, w).permute(0, 2, 3, 1).clone()
        uv[..., 0] /= w - 1
        uv[..., 1] /= h - 1
        grid_t = (uv - 0.5) * 2
        mask_t = torch.min(((grid_t >= -1) & (grid_t <= 1)).to(torch.float), dim=3, keepdim=True)[0]

        np.testing.assert_array_equal(grid_in_pytorch_order(depth, inv_K, T, K), grid_t.numpy())
        masks.append(in_view_in_pytorch_order(depth, inv_K, T, K))
        np.testing.assert_array_equal(masks[-1], mask_t.numpy())
    # fixtures' camera: the exact y of rows 0 and H-1 is on the border, rounding puts some pixels in view, some not
    in_view = masks[0][:, [0, -1], 10:-10].mean()
    print(f"\n[geometry] fixtures' camera, random depths: {in_view:.1%} of rows 0 and H-1 in view")
    assert 0.05 < in_view < 0.95


# ---------------------------------------------------------------------------------------------------------------
# (b) SelfOccluMask on a disparity step (spec §2.7)


def test_self_occlusion_mask_step():
    disp = np.full((3, 8, 100, 1), 5.0, np.float32)
    disp[:, :, 40:50] = 20.0  # foreground object
    mask = np.asarray(jax.jit(G.self_occlusion_mask)(disp, np.array([-1.0, 1.0, 0.0])))[..., 0]
    assert np.all(mask == mask[:, :1])  # every row alike (replicate padding)
    left, right, none = mask[0, 0], mask[1, 0], mask[2]
    np.testing.assert_array_equal(np.nonzero(left < 0.25)[0], np.arange(25, 35))
    np.testing.assert_array_equal(np.nonzero(right < 0.25)[0], np.arange(55, 65))
    assert np.abs(left[25:35]).max() < 1e-5 and np.abs(right[55:65]).max() < 1e-5
    np.testing.assert_allclose([left[39], right[50]], [0.5, 0.5], atol=1e-5)  # half values
    others_l = np.setdiff1d(np.arange(100), np.r_[25:35, 39])
    others_r = np.setdiff1d(np.arange(100), np.r_[55:65, 50])
    assert left[others_l].min() > 0.99 and right[others_r].min() > 0.99
    assert np.all(none == 0)  # baseline 0 -> zeros
    # 'r' is the mirror of 'l' on the mirrored disparity
    mirrored = np.asarray(G.self_occlusion_mask(disp[:1, :, ::-1], np.array([-1.0])))[0, 0, ::-1, 0]
    np.testing.assert_array_equal(right, mirrored)


def test_lap_plane_mask_step():
    depth = np.full((1, 12, 24, 1), 10.0, np.float32)
    depth[:, :, 12:] = 20.0  # a depth step between columns 11 and 12
    edge, plane = (np.asarray(a)[0, ..., 0] for a in jax.jit(G.lap_plane_mask)(depth))
    assert edge.min() >= 0
    # the Laplacian fires on columns 11 and 12, the 3x3 max-pool widens that to 10..13
    np.testing.assert_array_equal(plane[:, 10:14], 0.0)
    # zero padding makes the image border an edge (two pixels wide after the pool)
    np.testing.assert_array_equal(plane[[0, 1, -2, -1]], 0.0)
    np.testing.assert_array_equal(plane[:, [0, 1, -2, -1]], 0.0)
    # smooth regions (up to the rounding of depth / mean)
    assert plane[2:-2, 2:10].min() > 0.9999 and plane[2:-2, 14:-2].min() > 0.9999


# ---------------------------------------------------------------------------------------------------------------
# (c) Discrete warp of a one-hot bin volume = pixel shift; zeros padding of logits


def _one_hot_setup():
    # d2d = F * b so a bin disparity is a shift in pixels; bins 1, 2, 4, 8 -> depths 32, 16, 8, 4 (exact)
    bins = G.disparity_bins(1.0, 8.0, 4)
    np.testing.assert_array_equal(bins, [1, 2, 4, 8])
    depths = G.bin_depths(F_ * BASELINE, 1.0, 8.0, 4)
    K, inv_K, T = _cameras([-1, -1])
    return bins.astype(int), depths, K, inv_K, T


def test_warp_volume_zeros_outside_view():
    shifts, depths, K, inv_K, T = _one_hot_setup()
    logits = np.full((2, H, W, 4), 3.0, np.float32)
    warped = np.asarray(jax.jit(G.warp_volume)(logits, depths, inv_K, T, K))
    cols = np.arange(W)
    expected = np.where(cols[None, :, None] >= shifts[None, None, :], 3.0, 0.0)  # (1, W, N)
    np.testing.assert_array_equal(warped, np.broadcast_to(expected[:, None], warped.shape))
    frames = np.asarray(jax.jit(G.warp_frame)(_image((2, H, W, 3)), depths, inv_K, T, K))
    assert frames.shape == (2, H, W, 4, 3)


@pytest.mark.parametrize("k", [0, 2, 3])
def test_discrete_synthesis_one_hot_is_a_shift(k):
    shifts, depths, K, inv_K, T = _one_hot_setup()
    logits = np.zeros((2, H, W, 4), np.float32)
    logits[..., k] = 60.0
    img = _image((2, H, W, 3), seed=1)
    synth = np.asarray(jax.jit(G.discrete_synthesis)(logits, img, depths, inv_K, T, K))
    s = shifts[k]
    np.testing.assert_allclose(synth[:, :, s:], _shift_columns(img, s)[:, :, s:], rtol=0, atol=1e-6)
    # out of view, the bin-k logit is 0 like the others: a uniform mix of the (border-padded) frames
    frames = np.asarray(G.warp_frame(img, depths, inv_K, T, K))
    np.testing.assert_allclose(synth[:, :, :s], frames[:, :, :s].mean(axis=3), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# (d) Gradients


def test_project_image_gradient_wrt_depth():
    K, inv_K, T = _cameras([-1, +1])
    depth = np.random.default_rng(2).uniform(4, 12, (2, H, W, 1)).astype(np.float32)
    img = _image((2, H, W, 3), seed=3)
    grad = jax.jit(jax.grad(lambda d: jnp.sum(G.project_image(d, inv_K, T, K, img)[0])))(depth)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    assert np.count_nonzero(grad) > grad.size // 2


def discrete_synthesis_reference(logits, img, depths, inv_K, T, K):
    """The original's sequence, materialising both volumes: ``sum_j softmax_j(warp_volume) * warp_frame_j``
    (the plain-autodiff reference of `G.discrete_synthesis`, which holds the (B, H, W, N, C) image volume)."""
    prob = jax.nn.softmax(G.warp_volume(logits, depths, inv_K, T, K), axis=-1)  # (B, H, W, N)
    return jnp.sum(prob[..., None] * G.warp_frame(img, depths, inv_K, T, K), axis=3)


def _random_synthesis_inputs(h=10, w=36, b=2, seed=4):
    """KITTI-like camera scaled to a small image; the spec's 49 bins; peaked random logits."""
    rng = np.random.default_rng(seed)
    k = np.eye(4, dtype=np.float32)
    k[0, 0], k[0, 2], k[1, 1], k[1, 2] = 0.58 * w * 1.5, 0.5 * w, 1.92 * h * 1.5, 0.5 * h
    K = np.repeat(k[None], b, 0)
    inv_K = np.linalg.pinv(K.astype(np.float64)).astype(np.float32)
    T = np.repeat(np.eye(4, dtype=np.float32)[None], b, 0)
    T[:, 0, 3] = np.array([-0.54, 0.54][:b], np.float32)
    logits = (4 * rng.standard_normal((b, h, w, 49))).astype(np.float32)
    img = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
    cot = rng.standard_normal((b, h, w, 3)).astype(np.float32)
    return logits, img, G.bin_depths(), inv_K, T, K, cot


def test_discrete_synthesis_gradients_and_custom_vjp():
    logits, img, depths, inv_K, T, K, cot = _random_synthesis_inputs()

    def loss(fn, lg, im, dp, ik, t, k):
        return jnp.sum(fn(lg, im, dp, ik, t, k) * cot)

    grads = jax.jit(jax.grad(functools.partial(loss, G.discrete_synthesis), argnums=(0, 1, 2, 3, 4, 5)))
    ref_grads = jax.jit(jax.grad(functools.partial(loss, discrete_synthesis_reference), argnums=(0, 1)))
    g_logits, g_img, g_depths, g_inv_K, g_T, g_K = grads(logits, img, depths, inv_K, T, K)
    r_logits, r_img = ref_grads(logits, img, depths, inv_K, T, K)
    assert np.abs(np.asarray(g_logits)).max() > 0
    for g in (g_depths, g_inv_K, g_T, g_K):  # the grids are constants
        assert np.all(np.asarray(g) == 0)
    synth = jax.jit(G.discrete_synthesis)(logits, img, depths, inv_K, T, K)
    ref = jax.jit(discrete_synthesis_reference)(logits, img, depths, inv_K, T, K)
    errs = [rel_l2(np.asarray(a, np.float64), np.asarray(b, np.float64))
            for a, b in ((synth, ref), (g_logits, r_logits), (g_img, r_img))]
    print(f"\n[geometry] custom-VJP synthesis vs plain autodiff: value {errs[0]:.1e}, d/dlogits {errs[1]:.1e}, "
          f"d/dimg {errs[2]:.1e}")
    assert max(errs) < 1e-5


def test_discrete_synthesis_bfloat16_logits():
    """Under bfloat16 compute the logits are bfloat16 and the image float32: the warp and the softmax still run in
    float32, so the gradients are the float32 ones at those logits (the logits' rounded to bfloat16)."""
    logits, img, depths, inv_K, T, K, cot = _random_synthesis_inputs()
    grad = jax.jit(jax.grad(lambda lg, im: jnp.sum(G.discrete_synthesis(lg, im, depths, inv_K, T, K) * cot),
                            argnums=(0, 1)))
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    g_logits, g_img = grad(bf16, img)
    r_logits, r_img = grad(bf16.astype(jnp.float32), img)
    assert g_logits.dtype == jnp.bfloat16 and g_img.dtype == jnp.float32
    assert rel_l2(np.asarray(g_logits, np.float64), np.asarray(r_logits, np.float64)) < 4e-3  # bfloat16 rounding
    np.testing.assert_array_equal(g_img, r_img)


def test_discrete_synthesis_matches_torch_depth_transformer():
    """The original DepthTransformer loop (get_warped_volume/get_warped_frame), softmax and sum, in PyTorch."""
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    logits, img, depths, inv_K, T, K, cot = _random_synthesis_inputs()
    b, h, w, n = logits.shape
    xs, ys = np.meshgrid(range(w), range(h), indexing="xy")
    pix = torch.from_numpy(np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], 0).astype(np.float32))[None]
    K_t, inv_K_t, T_t = map(torch.from_numpy, (K, inv_K, T))
    cam = torch.matmul(inv_K_t[:, :3, :3], pix)
    P = torch.matmul(K_t, T_t)[:, :3, :]
    bins = [300 * 150 ** (j / 48 - 1) for j in range(49)]

    def grids():
        for disp in bins:
            pts = torch.matmul(P, torch.cat([(400.9 / disp) * cam, torch.ones(b, 1, h * w)], 1))
            pc = (pts[:, :2, :] / (pts[:, 2, :].unsqueeze(1) + 1e-8)).view(b, 2, h, w).permute(0, 2, 3, 1).clone()
            pc[..., 0] /= w - 1
            pc[..., 1] /= h - 1
            yield (pc - 0.5) * 2

    lg = torch.from_numpy(nchw(logits).copy()).requires_grad_(True)
    im = torch.from_numpy(nchw(img).copy())
    vol = torch.stack([tF.grid_sample(lg[:, j:j + 1], g, mode="bilinear", padding_mode="zeros", align_corners=True)
                       for j, g in enumerate(grids())], 2)
    frames = torch.stack([tF.grid_sample(im, g, mode="bilinear", padding_mode="border", align_corners=True)
                          for g in grids()], 2)
    synth_t = (tF.softmax(vol, dim=2) * frames).sum(dim=2)
    synth_t.backward(torch.from_numpy(nchw(cot).copy()))

    synth, vjp = jax.vjp(lambda x: G.discrete_synthesis(x, img, depths, inv_K, T, K), logits)
    err = rel_l2(nchw(synth).astype(np.float64), synth_t.detach().numpy().astype(np.float64))
    g_err = rel_l2(nchw(vjp(cot)[0]).astype(np.float64), lg.grad.numpy().astype(np.float64))
    print(f"\n[geometry] discrete synthesis vs PyTorch DepthTransformer: value rel L2 {err:.1e}, "
          f"d/dlogits rel L2 {g_err:.1e}")
    assert err < 1e-4 and g_err < 1e-3


def test_occlap_fusion_pvolume_formula():
    rng = np.random.default_rng(5)
    b, h, w, n = 2, 8, 64, 5
    mono_depth = rng.uniform(5, 40, (b, h, w, 1)).astype(np.float32)
    stereo_disp = np.full((b, h, w, 1), 4.0, np.float32) + rng.uniform(0, 0.5, (b, h, w, 1)).astype(np.float32)
    stereo_disp[:, :, 24:40] = 16.0  # a foreground object: occluded bands beside it
    stereo_depth = (40.09 / stereo_disp).astype(np.float32)
    mono_pv = jax.nn.softmax(rng.standard_normal((b, h, w, n)).astype(np.float32), -1)
    stereo_pv = jax.nn.softmax(rng.standard_normal((b, h, w, n)).astype(np.float32), -1)
    direct = np.array([1.0, -1.0], np.float32)
    out = jax.jit(G.occlap_fusion, static_argnames="d2d")(
        mono_depth, stereo_depth, stereo_disp, mono_pv, stereo_pv, direct, d2d=40.09)
    plane = np.asarray(out["plane_mask"])
    occ = np.asarray(G.occlusion_mask_downscaled(stereo_disp, direct))
    _, lap_plane = G.lap_plane_mask(stereo_depth)
    np.testing.assert_array_equal(plane[occ < 0.8], 1.0)
    np.testing.assert_allclose(plane[occ >= 0.8], np.asarray(lap_plane)[occ >= 0.8], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["fuse_pvolume"], mono_pv * (1 - plane) + stereo_pv * plane, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out["fuse_depth"], stereo_depth * plane + mono_depth * (1 - plane), rtol=1e-7)
    np.testing.assert_allclose(out["fuse_disp"], np.float32(40.09) / np.asarray(out["fuse_depth"]), rtol=1e-7)
    assert 0 < (occ < 0.8).mean() < 1  # the override is exercised
    assert G.occlap_fusion(mono_depth, stereo_depth, stereo_disp, None, None, direct)["fuse_pvolume"] is None


# ---------------------------------------------------------------------------------------------------------------
# Fixture parity (every TiO-Depth set, at its training size)

@pytest.fixture(scope="module", params=tio_params())
def tio(request) -> FixtureSet:
    return request.param


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def _inputs(fs):
    get = lambda k: fs.whole(f"in/{fs.train_size()}/{k}")  # noqa: E731  (inputs are always stored whole)
    return {k: get(k) for k in ("K", "inv_K", "T", "direct")} | {
        "color_s": _nhwc(get("color_s")), "color_o": _nhwc(get("color_o"))}


def _feed(fs, name):
    """(NHWC array, from the reference): the stored array when whole, else our own stage output."""
    if fs.is_whole(name):
        return _nhwc(fs.whole(name)), True
    from tests.parity_tio import lookup, train_outputs

    _, stage, key = name.split("/")
    return _nhwc(lookup(train_outputs(fs)[stage], key)), False


def _inner_rows(shape):
    keep = np.zeros(shape, bool)
    keep[..., 1:-1, :] = True
    return keep


def _model_params(fs):
    return fs.meta["config"]["model_params"]


def test_fixture_disparity_bins(tio):
    mp = _model_params(tio)
    reference = np.float32(next(v for k, v in tio.meta["config"].items() if k.startswith("volume_dk")))
    np.testing.assert_array_equal(G.disparity_bins(mp["min_disp"], mp["max_disp"], mp["out_ch"]), reference)


def test_fixture_stage2_masks_and_projections(tio):
    x = _inputs(tio)
    mono_depth, r1 = _feed(tio, "train/stage2/mono_depth_0_s")
    mono_disp, r2 = _feed(tio, "train/stage2/mono_disp_0_s")
    stereo_depth, _ = _feed(tio, "train/stage2/depth,s")

    project = jax.jit(G.project_image, static_argnames="with_mask")
    mono_proj, edge = project(mono_depth, x["inv_K"], x["T"], x["K"], x["color_o"], with_mask=True)
    stereo_proj, _ = project(stereo_depth, x["inv_K"], x["T"], x["K"], x["color_o"])
    occ = jax.jit(G.stereo_visible_mask)(mono_disp, x["direct"])
    occ_raw = np.asarray(jax.jit(G.occlusion_mask_downscaled)(mono_disp, x["direct"] * -1))
    np.testing.assert_array_equal(occ, (occ_raw > 0.8).astype(np.float32))

    # mono_occ_mask_s: thresholded (> 0.8), at most ~0.1 % flips expected (on the stored elements or samples)
    occ_frac, occ_flips, n_occ = tio.flip_fraction("train/stage2/mono_occ_mask_s", nchw(occ))
    # edge_mask_s: our grid is PyTorch's arithmetic bit for bit (on every row, whatever the depth), so from the
    # reference's depth every pixel matches. On rows 0 and H-1 rounding decides (fixtures README): from our own
    # depth (the reference's stored sampled) they follow its last bits, and are compared in tests/parity_tio.py.
    np.testing.assert_array_equal(edge, in_view_in_pytorch_order(mono_depth, x["inv_K"], x["T"], x["K"]))
    shape = tio.shape("train/stage2/edge_mask_s")
    rows = np.ones(shape, bool) if r1 else _inner_rows(shape)
    _, edge_flips, n_edge = tio.flip_fraction("train/stage2/edge_mask_s", nchw(edge), keep=rows)
    results = {"mono_proj_img_o_0_s": tio.compare("train/stage2/mono_proj_img_o_0_s", nchw(mono_proj)),
               "stereo_proj_img_o_0_s": tio.compare("train/stage2/stereo_proj_img_o_0_s", nchw(stereo_proj))}

    # fused_occ_color_s = V * color_s + (1 - V) * mono_proj, V = occ * edge. Where V agrees with the reference,
    # the only error is mono_proj's: none beyond rounding when mono_proj comes from the reference's depth (1e-4),
    # else mono_proj's own tolerance.
    name = "train/stage2/fused_occ_color_s"
    fused_tol = 1e-4 if r1 else tio.tolerance("train/stage2/mono_proj_img_o_0_s")
    fused, invalid = jax.jit(G.fused_target)(x["color_s"], mono_proj, occ, edge)
    masks = ("train/stage2/mono_occ_mask_s", "train/stage2/edge_mask_s", "train/stage2/invalid_mask_s")
    # Where V is decided (on the compared rows, occlusion value not within OCC_MARGIN of 0.8) no flip of V may
    # occur, whatever the inputs: checked on the stored elements (all, or the samples).
    decided = nchw(np.abs(occ_raw - 0.8) > OCC_MARGIN) & rows  # (B, 1, H, W)
    _, stray, n_decided = tio.flip_fraction(masks[2], nchw(invalid), keep=decided)
    if all(tio.is_whole(m) for m in masks):
        # (1) fed the reference masks; (2) with our masks, taking (1)'s value where our V differs from the
        # reference V
        ref_occ, ref_edge = (tio.whole(m) for m in masks[:2])
        fused_ref_masks, _ = G.fused_target(x["color_s"], mono_proj, _nhwc(ref_occ), _nhwc(ref_edge))
        results["fused_occ_color_s (reference masks)"] = tio.compare(name, nchw(fused_ref_masks), tol=fused_tol)
        v_agree = np.broadcast_to(nchw(invalid) == tio.whole(masks[2]), tio.shape(name))
        fused_agree = np.where(v_agree, nchw(fused), nchw(fused_ref_masks))
        results["fused_occ_color_s (our masks, where V agrees)"] = tio.compare(name, fused_agree, tol=fused_tol)
    else:  # masks stored sampled: compare where V is decided
        results["fused_occ_color_s (our masks, where V is decided)"] = tio.compare(
            name, nchw(fused), tol=fused_tol, keep=decided)
    # everywhere: from the reference's inputs V matches on every pixel, so only mono_proj's rounding remains
    results["fused_occ_color_s (our masks, everywhere)"] = tio.compare(name, nchw(fused),
                                                                      tol=fused_tol if r1 and r2 else None)
    invalid_frac, invalid_flips, _ = tio.flip_fraction(masks[2], nchw(invalid), keep=rows)

    print(f"\n[geometry] {tio.name}: inputs from {'the reference' if r1 and r2 else 'our stage outputs'}; "
          f"mono_occ_mask_s flips: {occ_flips}/{n_occ}; on {'all rows' if r1 else 'rows 1..H-2'}: edge_mask_s "
          f"flips {edge_flips}/{n_edge}, invalid_mask_s flips {invalid_flips}, where V is decided {stray}/{n_decided}")
    for label, c in results.items():
        print(f"[geometry] {label}: rel L2 {c.rel_l2:.2e} (tol {c.tol:.1e}) {c.detail}")
    assert occ_frac <= 0.001 and edge_flips == 0
    assert stray == 0, f"{stray}/{n_decided} stored elements of invalid_mask_s flipped where V is decided"
    # From the reference's disparity V may not flip; from ours, it may at the occlusion threshold (like
    # mono_occ_mask_s, at most 0.1 %).
    ok_invalid = (invalid_flips == 0) if r2 else (invalid_frac <= 0.001)
    assert ok_invalid, f"invalid_mask_s flips: {invalid_flips}"
    assert all(c.ok for c in results.values()), {k: c for k, c in results.items() if not c.ok}


def test_fixture_stage3_occlap_fusion(tio):
    x = _inputs(tio)
    mono_depth, r1 = _feed(tio, "train/stage2/mono_depth_0_s")
    stereo_depth, r2 = _feed(tio, "train/stage2/depth,s")
    stereo_disp, r3 = _feed(tio, "train/stage2/disp,s")
    reference_inputs = r1 and r2 and r3
    out = jax.jit(G.occlap_fusion, static_argnames="d2d")(mono_depth, stereo_depth, stereo_disp, None, None,
                                                          x["direct"], d2d=_model_params(tio)["d2d"])

    plane_name = "train/stage3/plane_mask_s"
    plane = nchw(out["plane_mask"])
    if tio.is_whole(plane_name):
        flipped = np.abs(plane - tio.whole(plane_name)) > 1e-3  # occlusion-override flips (stereo occ < 0.8)
        n_flipped, n_plane = int(flipped.sum()), flipped.size
        keep = ~flipped
        where = "where the override agrees"
    else:  # count the flips on the samples; compare where the override is decided (occ not within the margin)
        idx, val = tio.samples(plane_name)
        n_flipped, n_plane = int((np.abs(plane.reshape(-1)[idx] - val) > 1e-3).sum()), len(idx)
        occ = np.asarray(jax.jit(G.occlusion_mask_downscaled)(stereo_disp, x["direct"]))
        keep = nchw(np.abs(occ - 0.8) > OCC_MARGIN)
        where = "where the override is decided"
    # Where the override agrees, only rounding differs when the inputs are the reference's; from our stage-2
    # outputs, each array's own tolerance without the flips (decoder outputs, fixtures README: 1e-3).
    agree_tol = 1e-4 if reference_inputs else 1e-3
    lines, ok = [], True
    for key in ("plane_mask", "fuse_depth", "fuse_disp"):
        name = f"train/stage3/{key}_s"
        whole = tio.compare(name, nchw(out[key]))
        agree = tio.compare(name, nchw(out[key]), tol=agree_tol, keep=keep)
        lines.append(f"[geometry] {name}: rel L2 {whole.rel_l2:.2e} (tol {whole.tol:.1e}); "
                     f"{where} {agree.rel_l2:.2e} (tol {agree_tol:.0e}) {agree.detail}")
        ok &= whole.ok and agree.ok
    print(f"\n[geometry] {tio.name}: inputs from {'the reference' if reference_inputs else 'our stage outputs'}; "
          f"plane_mask_s override flips: {n_flipped}/{n_plane}")
    print("\n".join(lines))
    assert n_flipped <= 0.001 * n_plane
    assert ok
