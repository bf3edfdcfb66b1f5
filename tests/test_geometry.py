"""tiodepth_jax.ops.geometry: analytic cases, a PyTorch cross-check of the discrete warp and fixture parity.

Analytic cases use a pinhole camera whose arithmetic is exact in float32 (focal length 64, principal point on
integers, W - 1 and H - 1 powers of two), so a constant disparity of s pixels is an exact s-pixel shift.
Fixture parity reads the `tio_dinov2b` set (../shared/fixtures/README.md; directory from $TIODEPTH_FIXTURES).
Run with `pytest -s` to see the measured errors and flip counts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.parity import FixtureSet, discover, nchw, rel_l2
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
    ref_grads = jax.jit(jax.grad(functools.partial(loss, G.discrete_synthesis_reference), argnums=(0, 1)))
    g_logits, g_img, g_depths, g_inv_K, g_T, g_K = grads(logits, img, depths, inv_K, T, K)
    r_logits, r_img = ref_grads(logits, img, depths, inv_K, T, K)
    assert np.abs(np.asarray(g_logits)).max() > 0
    for g in (g_depths, g_inv_K, g_T, g_K):  # the grids are constants
        assert np.all(np.asarray(g) == 0)
    synth = jax.jit(G.discrete_synthesis)(logits, img, depths, inv_K, T, K)
    ref = jax.jit(G.discrete_synthesis_reference)(logits, img, depths, inv_K, T, K)
    errs = [rel_l2(np.asarray(a, np.float64), np.asarray(b, np.float64))
            for a, b in ((synth, ref), (g_logits, r_logits), (g_img, r_img))]
    print(f"\n[geometry] custom-VJP synthesis vs plain autodiff: value {errs[0]:.1e}, d/dlogits {errs[1]:.1e}, "
          f"d/dimg {errs[2]:.1e}")
    assert max(errs) < 1e-5


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
# Fixture parity (tio_dinov2b, 84x280)


@functools.lru_cache(maxsize=None)
def _tio_fixture():
    for path in discover():
        fs = FixtureSet(path)
        if fs.name.startswith("TiO-Depth") or fs.family.startswith("TiO-Depth"):
            return fs
    return None


@pytest.fixture(scope="module")
def tio():
    fs = _tio_fixture()
    if fs is None:
        pytest.skip("TiO-Depth fixture set (tio_dinov2b) not found: set TIODEPTH_FIXTURES to ../shared/fixtures")
    return fs


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def _inputs(fs):
    get = lambda k: fs.whole(f"in/84x280/{k}")  # noqa: E731
    return {k: get(k) for k in ("K", "inv_K", "T", "direct")} | {
        "color_s": _nhwc(get("color_s")), "color_o": _nhwc(get("color_o"))}


def test_fixture_disparity_bins(tio):
    reference = np.float32(tio.meta["config"]["volume_dk(49 disparity bins)"])
    np.testing.assert_array_equal(G.disparity_bins(), reference)


def test_fixture_stage2_masks_and_projections(tio):
    x = _inputs(tio)
    mono_depth = _nhwc(tio.whole("train/stage2/mono_depth_0_s"))
    mono_disp = _nhwc(tio.whole("train/stage2/mono_disp_0_s"))
    stereo_depth = _nhwc(tio.whole("train/stage2/depth,s"))

    project = jax.jit(G.project_image, static_argnames="with_mask")
    mono_proj, edge = project(mono_depth, x["inv_K"], x["T"], x["K"], x["color_o"], with_mask=True)
    stereo_proj, _ = project(stereo_depth, x["inv_K"], x["T"], x["K"], x["color_o"])
    occ = jax.jit(G.stereo_visible_mask)(mono_disp, x["direct"])
    occ_raw = jax.jit(G.occlusion_mask_downscaled)(mono_disp, x["direct"] * -1)
    np.testing.assert_array_equal(occ, (np.asarray(occ_raw) > 0.8).astype(np.float32))

    # mono_occ_mask_s: thresholded (> 0.8), at most ~0.1 % flips expected
    ref_occ = tio.whole("train/stage2/mono_occ_mask_s")
    occ_flips = int((nchw(occ) != ref_occ).sum())
    # edge_mask_s: exact except on rows 0 and H-1 (decided by rounding; fixtures README)
    ref_edge = tio.whole("train/stage2/edge_mask_s")
    edge_diff = nchw(edge) != ref_edge
    interior_flips, border_flips = int(edge_diff[:, :, 1:-1].sum()), int(edge_diff.sum())
    results = {"mono_proj_img_o_0_s": tio.compare("train/stage2/mono_proj_img_o_0_s", nchw(mono_proj)),
               "stereo_proj_img_o_0_s": tio.compare("train/stage2/stereo_proj_img_o_0_s", nchw(stereo_proj))}

    # fused_occ_color_s = V * color_s + (1 - V) * mono_proj, V = occ * edge: (1) fed the reference masks;
    # (2) with our masks, taking (1)'s value where our V differs from the reference V (rows 0 / H-1 only)
    name = "train/stage2/fused_occ_color_s"
    fused_ref_masks, _ = G.fused_target(x["color_s"], mono_proj, _nhwc(ref_occ), _nhwc(ref_edge))
    results["fused_occ_color_s (reference masks)"] = tio.compare(name, nchw(fused_ref_masks), tol=1e-4)
    fused, invalid = jax.jit(G.fused_target)(x["color_s"], mono_proj, occ, edge)
    ref_invalid = tio.whole("train/stage2/invalid_mask_s")
    v_agree = np.broadcast_to(nchw(invalid) == ref_invalid, (2, 3, 84, 280))
    fused_agree = np.where(v_agree, nchw(fused), nchw(fused_ref_masks))
    results["fused_occ_color_s (our masks, where V agrees)"] = tio.compare(name, fused_agree, tol=1e-4)
    results["fused_occ_color_s (our masks, everywhere)"] = tio.compare(name, nchw(fused))
    invalid_flips = int((nchw(invalid) != ref_invalid)[:, :, 1:-1].sum())

    n = ref_occ.size
    print(f"\n[geometry] mono_occ_mask_s flips: {occ_flips}/{n}; edge_mask_s flips: {interior_flips} off rows "
          f"0/H-1 ({border_flips} with them, not checked); invalid_mask_s flips off rows 0/H-1: {invalid_flips}")
    for label, c in results.items():
        print(f"[geometry] {label}: rel L2 {c.rel_l2:.2e} (tol {c.tol:.1e}) {c.detail}")
    assert occ_flips <= 0.001 * n
    assert interior_flips == 0 and invalid_flips == 0
    assert all(c.ok for c in results.values()), {k: c for k, c in results.items() if not c.ok}


def test_fixture_stage3_occlap_fusion(tio):
    x = _inputs(tio)
    mono_depth = _nhwc(tio.whole("train/stage2/mono_depth_0_s"))
    stereo_depth = _nhwc(tio.whole("train/stage2/depth,s"))
    stereo_disp = _nhwc(tio.whole("train/stage2/disp,s"))
    out = jax.jit(G.occlap_fusion)(mono_depth, stereo_depth, stereo_disp, None, None, x["direct"])

    plane, ref_plane = nchw(out["plane_mask"]), tio.whole("train/stage3/plane_mask_s")
    flipped = np.abs(plane - ref_plane) > 1e-3  # occlusion-override flips (stereo occ < 0.8)
    keep = ~flipped
    lines, ok = [], True
    for key in ("plane_mask", "fuse_depth", "fuse_disp"):
        name = f"train/stage3/{key}_s"
        ours, ref = nchw(out[key]).astype(np.float64), tio.whole(name).astype(np.float64)
        whole = tio.compare(name, ours)
        agree = rel_l2(ours[keep], ref[keep])
        lines.append(f"[geometry] {name}: rel L2 {whole.rel_l2:.2e} (tol {whole.tol:.1e}); "
                     f"where the override agrees {agree:.2e} (tol 1e-4)")
        ok &= whole.ok and agree <= 1e-4
    print(f"\n[geometry] plane_mask_s override flips: {int(flipped.sum())}/{flipped.size}")
    print("\n".join(lines))
    assert flipped.sum() <= 0.001 * flipped.size
    assert ok
