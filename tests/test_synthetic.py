"""tiodepth_jax.data.synthetic: determinism, batch format (spec §6.5), geometric consistency with
``ops.geometry.project_image`` (spec §2.6.2, §12.7), augmentations and render speed.

Run with ``pytest -s`` to see the measured photometric warp errors and render times.
"""

import time

import jax.numpy as jnp
import numpy as np
import pytest

from tiodepth_jax.data import augment as A
from tiodepth_jax.data import synthetic as S
from tiodepth_jax.ops.geometry import project_image

CFG = S.SceneConfig(height=48, width=160)
BATCH_KEYS = {"color_s", "color_o", "color_s_aug", "color_o_aug", "K", "inv_K", "T", "direct", "depth_gt"}


def test_render_pair_is_deterministic():
    a, b = S.render_pair(CFG, 7), S.render_pair(CFG, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["color_l"], S.render_pair(CFG, 8)["color_l"])


def test_render_pair_shapes_and_ranges():
    cfg = S.SceneConfig(height=30, width=100, num_objects=3)
    out = S.render_pair(cfg, 0)
    for key in ("color_l", "color_r"):
        assert out[key].shape == (30, 100, 3) and out[key].dtype == np.float32
        assert out[key].min() >= 0 and out[key].max() <= 1 and out[key].std() > 0.05  # textured
    for key in ("depth_l", "depth_r"):
        assert out[key].shape == (30, 100) and out[key].dtype == np.float32
        assert np.all(np.isfinite(out[key])) and out[key].min() > 0 and out[key].max() <= cfg.max_depth
    assert out["K"].shape == (4, 4) and out["K"].dtype == np.float32


def test_default_intrinsics_are_kitti_scaled():
    k = S.camera_matrix(S.SceneConfig(height=375, width=1242))
    np.testing.assert_allclose(k[:3, :3], [[721.54, 0, 609.56], [0, 721.54, 172.85], [0, 0, 1]], rtol=1e-6)
    fx, fy, cx, cy = S.intrinsics(S.SceneConfig(height=84, width=280, fy=100.0))
    assert fx == pytest.approx(721.54 * 280 / 1242) and fy == 100.0 and cy == pytest.approx(172.85 * 84 / 375)


def test_make_batch_format():
    batch = S.make_batch(CFG, [0, 1, 2], rng=np.random.default_rng(0))
    assert set(batch) == BATCH_KEYS
    assert all(v.dtype == np.float32 for v in batch.values())
    for key in ("color_s", "color_o", "color_s_aug", "color_o_aug"):
        assert batch[key].shape == (3, 48, 160, 3)
    assert batch["depth_gt"].shape == (3, 48, 160, 1)
    assert batch["direct"].shape == (3,) and np.all(batch["direct"] == 1)
    t = np.repeat(np.eye(4, dtype=np.float32)[None], 3, 0)
    t[:, 0, 3] = -0.54
    np.testing.assert_array_equal(batch["T"], t)
    k = S.camera_matrix(CFG)
    np.testing.assert_array_equal(batch["K"], np.repeat(k[None], 3, 0))
    np.testing.assert_array_equal(batch["inv_K"][0], np.linalg.pinv(k.astype(np.float64)).astype(np.float32))
    plain = S.make_batch(CFG, [0, 1, 2])  # no rng: no augmentation
    np.testing.assert_array_equal(plain["color_s_aug"], plain["color_s"])
    pair = S.render_pair(CFG, 1)
    np.testing.assert_array_equal(plain["color_s"][1], pair["color_l"])
    np.testing.assert_array_equal(plain["color_o"][1], pair["color_r"])
    np.testing.assert_array_equal(plain["depth_gt"][1, ..., 0], pair["depth_l"])


def test_street_walls_and_ground_have_the_expected_depth():
    cfg = S.SceneConfig(height=48, width=160, num_objects=0, max_depth=200.0)
    fx, fy, cx, cy = S.intrinsics(cfg)
    x_left, x_right = S._sample_scene(cfg, np.random.default_rng(5)).street
    assert x_left <= -cfg.street_width[0] and x_right >= cfg.baseline + cfg.street_width[0]  # around both cameras
    pair = S.render_pair(cfg, 5)
    dx, dy = (np.arange(cfg.width) - cx) / fx, (np.arange(cfg.height) - cy) / fy
    for depth, cam_x in ((pair["depth_l"], 0.0), (pair["depth_r"], cfg.baseline)):
        np.testing.assert_allclose(depth[0, 0], (x_left - cam_x) / dx[0], rtol=1e-5)  # top corners: the facades
        np.testing.assert_allclose(depth[0, -1], (x_right - cam_x) / dx[-1], rtol=1e-5)
        mid = int(round(cx))  # bottom centre: the ground
        np.testing.assert_allclose(depth[-1, mid], cfg.camera_height / dy[-1], rtol=1e-5)


def test_texture_shrinks_with_distance_then_fades():
    """World-space texture: a facade at 40 m shows finer detail per pixel than one at 8 m (its cells are smaller
    in the image); at 400 m every octave is below texture_min_px and fades out, leaving a flat colour."""
    def fine_detail(max_depth):  # mean |second difference| along rows of an image that is all back wall
        cfg = S.SceneConfig(height=48, width=160, num_objects=0, ground=False, street_width=None, max_depth=max_depth)
        return np.abs(np.diff(S.render_pair(cfg, 0)["color_l"], 2, axis=1)).mean()
    near, mid, far = fine_detail(8.0), fine_detail(40.0), fine_detail(400.0)
    assert near > 0.003 and mid > 1.5 * near and far == 0


def _warp_error(sample, depth_other, fx, baseline):
    """Mean |warp(color_o -> s view with depth_gt) - color_s| over visible in-view pixels, and their fraction.

    Visible: in view, and left-right consistent (the other view's disparity warped into the target view agrees
    with the target's within 0.25 px), which excludes occluded pixels and samples that straddle a depth edge.
    """
    b = S.stack_samples([sample])
    depth = jnp.asarray(b["depth_gt"])
    cams = b["inv_K"], b["T"], b["K"]
    warped, in_view = project_image(depth, *cams, jnp.asarray(b["color_o"]), with_mask=True)
    disp_other = (fx * baseline / depth_other)[None, :, :, None].astype(np.float32)
    warped_disp, _ = project_image(depth, *cams, jnp.asarray(disp_other))
    disp = fx * baseline / b["depth_gt"]
    visible = (np.abs(np.asarray(warped_disp) - disp) < 0.25) & (np.asarray(in_view) > 0)
    err = np.abs(np.asarray(warped) - b["color_s"]).mean(-1, keepdims=True)
    return float(err[visible].mean()), float(visible.mean())


@pytest.mark.parametrize("flip", [False, True])
def test_warping_the_other_view_reproduces_the_target(flip):
    fx = S.intrinsics(CFG)[0]
    rng = np.random.default_rng(0)
    errors = []
    for seed in range(4):
        sample = S.make_sample(CFG, seed, rng=rng, flip_prob=float(flip), color_aug_prob=0.0)
        pair = S.render_pair(CFG, seed)
        if flip:  # swap + mirror: the target is the mirrored right view, its depth the mirrored right depth
            np.testing.assert_array_equal(sample["color_s"], pair["color_r"][:, ::-1])
            np.testing.assert_array_equal(sample["color_o"], pair["color_l"][:, ::-1])
            np.testing.assert_array_equal(sample["depth_gt"][..., 0], pair["depth_r"][:, ::-1])
            depth_other = pair["depth_l"][:, ::-1]
        else:
            depth_other = pair["depth_r"]
        err, visible = _warp_error(sample, depth_other, fx, CFG.baseline)
        errors.append(err)
        assert visible > 0.8
    print(f"\nflip={flip}: mean |warp - target| on visible pixels per scene: {np.round(errors, 5)}")
    assert max(errors) < 0.005


def _same_channel_maps(src_a, out_a, src_b, out_b, tol=1e-6):
    """True if one monotone map per channel sends both (src -> out) image pairs: sorted by input value,
    the outputs of the union never decrease (the augmentation is monotone in each channel)."""
    for c in range(3):
        x = np.concatenate([src_a[..., c].ravel(), src_b[..., c].ravel()])
        y = np.concatenate([out_a[..., c].ravel(), out_b[..., c].ravel()])
        if np.any(np.diff(y[np.argsort(x, kind="stable")]) < -tol):
            return False
    return True


def test_color_augmentation_shares_parameters_between_views():
    batch = S.make_batch(CFG, range(4), rng=np.random.default_rng(1), flip_prob=0.0, color_aug_prob=1.0)
    for i in range(4):
        s, o, s_aug, o_aug = (batch[k][i] for k in ("color_s", "color_o", "color_s_aug", "color_o_aug"))
        assert not np.array_equal(s, s_aug)
        assert _same_channel_maps(s, s_aug, o, o_aug)
    # Negative control: different parameters for the two views are detected.
    rng = np.random.default_rng(2)
    s, o = batch["color_s"][0], batch["color_o"][0]
    aug_s, aug_o = A.draw_color_aug(rng, 1.0), A.draw_color_aug(rng, 1.0)
    assert not _same_channel_maps(s, A.apply_color_aug(s, aug_s), o, A.apply_color_aug(o, aug_o))
    # With p = 0.5 some samples are left unchanged.
    batch = S.make_batch(CFG, range(8), rng=np.random.default_rng(3), flip_prob=0.0)
    unchanged = [np.array_equal(batch["color_s"][i], batch["color_s_aug"][i]) for i in range(8)]
    assert any(unchanged) and not all(unchanged)


def test_synthetic_stereo_dataset():
    ds = S.SyntheticStereo(CFG, 5, base_seed=100)
    assert len(ds) == 5
    item = ds[2]
    reference = S.make_sample(CFG, 102)
    assert set(item) == BATCH_KEYS and item["direct"].shape == ()
    assert all(np.array_equal(item[k], reference[k]) for k in item)
    with pytest.raises(IndexError):
        ds[5]
    batch = ds.batch([4, 0], rng=np.random.default_rng(0))
    expected = S.make_batch(CFG, [104, 100], rng=np.random.default_rng(0))
    assert all(np.array_equal(batch[k], expected[k]) for k in batch)


def _best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_render_speed():
    small = _best_time(lambda: S.render_pair(S.SceneConfig(height=84, width=280), 0), 3)
    large = _best_time(lambda: S.render_pair(S.SceneConfig(height=252, width=840), 0), 2)
    print(f"\nrender_pair: 84x280 {small * 1e3:.1f} ms, 252x840 {large * 1e3:.1f} ms")
    assert small < 0.1 and large < 1.0
