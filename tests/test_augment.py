"""tiodepth_jax.data.augment: the spec §6.5 draw arithmetic, augment_pair against hand-made crops, camera
arrays per flip mode, geometric consistency of augmented synthetic pairs with ``ops.geometry.project_image``
(spec §2.6.2, §12.7), and the spec §8 test preprocessing.

Run with ``pytest -s`` to see the measured photometric warp errors.
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tiodepth_jax.data import augment as A
from tiodepth_jax.data import synthetic as S
from tiodepth_jax.ops.geometry import project_image

FULL, CROP = (378, 1260), (252, 840)  # the DINOv2 training sizes (arithmetic only, no images that big)
RAW_K = np.array([[721.54, 0, 609.56], [0, 721.54, 172.85], [0, 0, 1]])


def _random_image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# (a) draw_params


@pytest.mark.parametrize("flip_mode", ["img", "k", "none"])
def test_draw_params_follows_the_spec_arithmetic(flip_mode):
    for seed in range(20):
        drawn = np.random.default_rng(seed)
        params = A.draw_params(drawn, FULL, CROP, flip_mode=flip_mode)
        rng = np.random.default_rng(seed)  # the same draws, in the documented order
        flip = flip_mode != "none" and rng.random() < 0.5
        s = rng.uniform(0.75, 1.5)
        th, tw = int(252 / s) + 1, int(840 / s) + 1
        i, j = rng.integers(0, 378 - th + 1), rng.integers(0, 1260 - tw + 1)
        color = S.draw_color_aug(rng, 0.5)
        assert (params.flip, params.scale, params.top, params.left) == (flip, s, int(i * s), int(j * s))
        assert params.flip_mode == flip_mode
        if color is None:
            assert params.color is None
        else:
            assert (params.color.gamma, params.color.brightness) == (color.gamma, color.brightness)
            np.testing.assert_array_equal(params.color.channels, color.channels)
        assert drawn.random() == rng.random()  # no other draws


def test_draw_params_without_rescale():
    """scale_range=None (config ``data.scale_range: null``): s = 1 is not drawn, the window is the crop itself."""
    for seed in range(20):
        drawn = np.random.default_rng(seed)
        params = A.draw_params(drawn, FULL, CROP, scale_range=None)
        rng = np.random.default_rng(seed)
        flip = rng.random() < 0.5
        i, j = rng.integers(0, 378 - 252 + 1), rng.integers(0, 1260 - 840 + 1)
        color = S.draw_color_aug(rng, 0.5)
        assert (params.flip, params.scale, params.top, params.left) == (flip, 1.0, i, j)
        assert (params.color is None) == (color is None)
        assert drawn.random() == rng.random()  # no other draws
    whole = A.draw_params(np.random.default_rng(0), FULL, FULL, scale_range=None)  # the crop may be the image
    assert (whole.scale, whole.top, whole.left) == (1.0, 0, 0)
    with pytest.raises(ValueError, match="larger than full_size"):
        A.draw_params(np.random.default_rng(0), CROP, FULL, scale_range=None)


def test_draw_params_distribution_and_window_inside_the_resized_image():
    rng = np.random.default_rng(0)
    draws = [A.draw_params(rng, FULL, CROP) for _ in range(2000)]
    scales = np.array([p.scale for p in draws])
    assert scales.min() >= 0.75 and scales.max() < 1.5 and scales.min() < 0.76 and scales.max() > 1.49
    assert 0.45 < np.mean([p.flip for p in draws]) < 0.55
    assert 0.45 < np.mean([p.color is not None for p in draws]) < 0.55
    for p in draws:
        h, w = A.resized_size(FULL, p.scale)
        assert 0 <= p.top <= h - CROP[0] and 0 <= p.left <= w - CROP[1]


@pytest.mark.parametrize("s", [0.75, 1.5])
def test_extreme_scales_keep_the_window_inside(s):
    h, w = int(378 * s), int(1260 * s)
    th, tw = int(252 / s) + 1, int(840 / s) + 1
    assert A.resized_size(FULL, s) == (h, w) and A.crop_source_size(CROP, s) == (th, tw)
    for i in (0, 378 - th):  # the extreme window positions
        for j in (0, 1260 - tw):
            assert int(i * s) + 252 <= h and int(j * s) + 840 <= w
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = A.draw_params(rng, FULL, CROP, scale_range=(s, s))
        assert p.scale == s and p.top <= h - 252 and p.left <= w - 840


def test_draw_params_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(300, 840\)"):  # th' = int(300 / 0.75) + 1 = 401 > 378
        A.draw_params(rng, FULL, (300, 840))
    with pytest.raises(ValueError, match="'flip'"):
        A.draw_params(rng, FULL, CROP, flip_mode="flip")
    with pytest.raises(ValueError, match=r"\(1.5, 0.75\)"):
        A.draw_params(rng, FULL, CROP, scale_range=(1.5, 0.75))
    with pytest.raises(ValueError, match="full_size"):
        A.draw_params(rng, (378.0, 1260), CROP)
    with pytest.raises(ValueError, match="flip_mode 'none'"):
        A.AugmentParams(flip=True, scale=1.0, top=0, left=0, color=None, flip_mode="none")


# ---------------------------------------------------------------------------------------------------------------
# (b) augment_pair with given parameters

RAW, SMALL_FULL, SMALL_CROP = (30, 50), (24, 40), (16, 24)


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    return _random_image(rng, *RAW), _random_image(rng, *RAW)


def _augment(img_s, img_o, params, direct=1.0, baseline=0.54):
    return A.augment_pair(img_s, img_o, RAW_K, baseline, direct, params, full_size=SMALL_FULL,
                          crop_size=SMALL_CROP)


def _hand_crop(img, s, top, left):
    """Lanczos resize of the raw image straight to int(full * s), then the crop, / 255."""
    h, w = int(SMALL_FULL[0] * s), int(SMALL_FULL[1] * s)
    resized = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))
    return resized[top:top + SMALL_CROP[0], left:left + SMALL_CROP[1]].astype(np.float32) / 255


@pytest.mark.parametrize("s, top, left", [(1.3, 5, 10), (0.7, 0, 4), (1.0, 8, 16)])
def test_crop_equals_the_hand_cropped_lanczos_resize(s, top, left):
    img_s, img_o = _pair()
    out = _augment(img_s, img_o, A.AugmentParams(False, s, top, left, None))
    np.testing.assert_array_equal(out["color_s"], _hand_crop(img_s, s, top, left))
    np.testing.assert_array_equal(out["color_o"], _hand_crop(img_o, s, top, left))
    for key in ("color_s", "color_o", "color_s_aug", "color_o_aug"):
        assert out[key].shape == (*SMALL_CROP, 3) and out[key].dtype == np.float32
    np.testing.assert_array_equal(out["color_s_aug"], out["color_s"])  # no colour augmentation


def test_flip_modes_mirror_before_resizing_and_img_swaps():
    img_s, img_o = _pair(1)
    s, top, left = 1.2, 3, 7
    img = _augment(img_s, img_o, A.AugmentParams(True, s, top, left, None, "img"))
    np.testing.assert_array_equal(img["color_s"], _hand_crop(np.ascontiguousarray(img_o[:, ::-1]), s, top, left))
    np.testing.assert_array_equal(img["color_o"], _hand_crop(np.ascontiguousarray(img_s[:, ::-1]), s, top, left))
    k = _augment(img_s, img_o, A.AugmentParams(True, s, top, left, None, "k"))
    np.testing.assert_array_equal(k["color_s"], _hand_crop(np.ascontiguousarray(img_s[:, ::-1]), s, top, left))
    np.testing.assert_array_equal(k["color_o"], _hand_crop(np.ascontiguousarray(img_o[:, ::-1]), s, top, left))
    none = _augment(img_s, img_o, A.AugmentParams(False, s, top, left, None, "none"))
    np.testing.assert_array_equal(none["color_s"], _hand_crop(img_s, s, top, left))


def test_color_aug_uses_the_same_parameters_on_both_views():
    img_s, img_o = _pair(2)
    aug = A.ColorAug(gamma=1.1, brightness=1.6, channels=np.array([0.9, 1.15, 0.85]))
    out = _augment(img_s, img_o, A.AugmentParams(True, 0.9, 2, 3, aug, "img"))
    np.testing.assert_array_equal(out["color_s_aug"], A.apply_color_aug(out["color_s"], aug))
    np.testing.assert_array_equal(out["color_o_aug"], A.apply_color_aug(out["color_o"], aug))
    assert out["color_s_aug"].dtype == np.float32 and not np.array_equal(out["color_s_aug"], out["color_s"])


def test_apply_color_aug_by_hand():
    img = np.array([[0.25, 0.5, 1.0]], np.float32)
    aug = A.ColorAug(gamma=2.0, brightness=2.0, channels=np.array([1.0, 1.2, 0.8]))
    # 0.25^2 * 2 = 0.125; 0.5^2 * 2 = 0.5, * 1.2 = 0.6; 1 * 2 -> clip 1, * 0.8 = 0.8
    np.testing.assert_allclose(A.apply_color_aug(img, aug), [[0.125, 0.6, 0.8]], rtol=1e-6)
    assert A.apply_color_aug(img, None) is img


@pytest.mark.parametrize("mode, flip, direct, expected_direct", [
    ("img", False, 1.0, 1.0), ("img", True, 1.0, 1.0), ("img", True, -1.0, -1.0),
    ("k", True, 1.0, -1.0), ("k", True, -1.0, 1.0), ("k", False, -1.0, -1.0), ("none", False, 1.0, 1.0)])
def test_camera_arrays(mode, flip, direct, expected_direct):
    img_s, img_o = _pair(3)
    out = _augment(img_s, img_o, A.AugmentParams(flip, 1.4, 4, 9, None, mode), direct=direct, baseline=0.5)
    k = np.eye(4)
    k[:3, :3] = RAW_K
    k[0] *= SMALL_FULL[1] / RAW[1]  # K is scaled raw -> full size only: not by the random scale, not by the crop
    k[1] *= SMALL_FULL[0] / RAW[0]
    np.testing.assert_array_equal(out["K"], k.astype(np.float32))
    np.testing.assert_array_equal(out["inv_K"], np.linalg.pinv(k).astype(np.float32))
    t = np.eye(4, dtype=np.float32)
    t[0, 3] = -0.5 * expected_direct  # -baseline for a left target (spec §6.5 step 2, §12.7)
    np.testing.assert_array_equal(out["T"], t)
    assert out["direct"] == expected_direct and out["direct"].dtype == np.float32 and out["direct"].shape == ()
    assert all(out[key].dtype == np.float32 and out[key].shape == (4, 4) for key in ("K", "inv_K", "T"))


def test_augment_pair_validation():
    img_s, img_o = _pair(4)
    ok = A.AugmentParams(False, 1.0, 0, 0, None)
    with pytest.raises(ValueError, match="image_s must be a uint8.*float32"):
        _augment(img_s.astype(np.float32), img_o, ok)
    with pytest.raises(ValueError, match=r"\(30, 49, 3\)"):
        _augment(img_s, img_o[:, :49], ok)
    with pytest.raises(ValueError, match=r"\(top, left\) = \(9, 0\).*\(24, 40\)"):  # 9 + 16 > 24
        _augment(img_s, img_o, A.AugmentParams(False, 1.0, 9, 0, None))
    with pytest.raises(ValueError, match="direct must be"):
        _augment(img_s, img_o, ok, direct=0.0)
    with pytest.raises(ValueError, match="baseline"):
        _augment(img_s, img_o, ok, baseline=-0.54)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        A.augment_pair(img_s, img_o, np.eye(4), 0.54, 1.0, ok, full_size=SMALL_FULL, crop_size=SMALL_CROP)


def test_train_sample_is_draw_params_then_augment_pair():
    img_s, img_o = _pair(5)
    record = {"image_s": img_s, "image_o": img_o, "K": RAW_K.astype(np.float32), "baseline": np.float32(0.54),
              "direct": np.float32(-1), "name": b"x 1 r"}
    options = dict(flip_mode="k", scale_range=(0.8, 1.3), color_aug_prob=0.5)
    for seed in range(4):
        out = A.train_sample(record, np.random.default_rng(seed), full_size=SMALL_FULL, crop_size=SMALL_CROP,
                             **options)
        params = A.draw_params(np.random.default_rng(seed), SMALL_FULL, SMALL_CROP, **options)
        expected = A.augment_pair(img_s, img_o, record["K"], 0.54, -1.0, params, full_size=SMALL_FULL,
                                  crop_size=SMALL_CROP)
        assert set(out) == set(expected) == {"color_s", "color_o", "color_s_aug", "color_o_aug", "K", "inv_K", "T",
                                             "direct"}
        assert all(np.array_equal(out[key], expected[key]) for key in out)


# ---------------------------------------------------------------------------------------------------------------
# (c) geometric consistency on a synthetic scene
#
# Let W_s = int(full_W * s). The augmented image is the raw image resampled horizontally by W_s / W_raw (then
# cropped), so a disparity of disp_raw raw pixels becomes disp_aug = disp_raw * W_s / W_raw. With
# disp_raw = fx_raw * B / z and K[0, 0] = fx_full = fx_raw * full_W / W_raw this is
# disp_aug = (W_s / full_W) * fx_full * B / z ~ s * fx_full * B / z: the augmented image behaves like a camera of
# focal s * fx_full, while the sample's K keeps fx_full. The model's warp (depth d, K, T) shifts a pixel by
# K[0, 0] * |T[0, 3]| / d (the principal point and the crop offset cancel for a pure x translation), so the depth
# consistent with the augmented images is d = K[0, 0] * B / disp_aug = z * full_W / W_s ~ z / s.

GEO_RAW, GEO_FULL, GEO_CROP = (84, 252), (72, 240), (48, 160)  # non-uniform raw -> full scaling on purpose
GEO_CFG = S.SceneConfig(height=GEO_RAW[0], width=GEO_RAW[1])


def _bilinear(img, y, x):
    """Bilinear sample of img (H, W) at float coordinates y, x (broadcast), clamped to the image."""
    h, w = img.shape
    y, x = np.broadcast_arrays(np.clip(y, 0, h - 1), np.clip(x, 0, w - 1))
    y0, x0 = np.minimum(np.floor(y).astype(int), h - 2), np.minimum(np.floor(x).astype(int), w - 2)
    ay, ax = y - y0, x - x0
    top = img[y0, x0] * (1 - ax) + img[y0, x0 + 1] * ax
    bottom = img[y0 + 1, x0] * (1 - ax) + img[y0 + 1, x0 + 1] * ax
    return top * (1 - ay) + bottom * ay


def _disparity_in_crop(disp_raw, params):
    """A raw-resolution disparity map (raw pixels) -> the augmented crop's pixels (PIL pixel-centre mapping)."""
    h, w = A.resized_size(GEO_FULL, params.scale)
    y = (np.arange(GEO_CROP[0])[:, None] + params.top + 0.5) * GEO_RAW[0] / h - 0.5
    x = (np.arange(GEO_CROP[1])[None, :] + params.left + 0.5) * GEO_RAW[1] / w - 0.5
    return _bilinear(disp_raw, y, x) * w / GEO_RAW[1]


def _warp(sample, depth, image, t03):
    t = sample["T"].copy()
    t[0, 3] = t03
    cams = [jnp.asarray(a[None]) for a in (sample["inv_K"], t, sample["K"])]
    warped, in_view = project_image(jnp.asarray(depth[None, ..., None], jnp.float32), *cams,
                                    jnp.asarray(image[None], jnp.float32), with_mask=True)
    return np.asarray(warped[0]), np.asarray(in_view[0, ..., 0]) > 0


@pytest.mark.parametrize("mode, flip", [("img", False), ("img", True), ("k", True)])
def test_augmented_pair_is_consistent_with_the_model_geometry(mode, flip):
    errors = []
    for seed, s in ((0, 0.8), (1, 1.4)):
        pair = S.render_pair(GEO_CFG, seed)
        fx_raw = float(pair["K"][0, 0])
        u8 = [np.round(pair[key] * 255).astype(np.uint8) for key in ("color_l", "color_r")]
        h, w = A.resized_size(GEO_FULL, s)
        params = A.AugmentParams(flip, s, h - GEO_CROP[0], (w - GEO_CROP[1]) // 3, None, mode)
        sample = A.augment_pair(*u8, pair["K"][:3, :3], 0.54, 1.0, params, full_size=GEO_FULL,
                                crop_size=GEO_CROP)
        disp_l, disp_r = (fx_raw * 0.54 / pair[key] for key in ("depth_l", "depth_r"))
        if flip and mode == "img":  # target = mirrored right view, other = mirrored left view
            disp_s, disp_o = disp_r[:, ::-1], disp_l[:, ::-1]
        elif flip:  # 'k': target = mirrored left view (a right view of the mirrored scene), direct = -1
            disp_s, disp_o = disp_l[:, ::-1], disp_r[:, ::-1]
        else:
            disp_s, disp_o = disp_l, disp_r
        disp_s, disp_o = _disparity_in_crop(disp_s, params), _disparity_in_crop(disp_o, params)
        fx, t03 = float(sample["K"][0, 0]), float(sample["T"][0, 3])
        depth = fx * 0.54 / disp_s  # ~ z / s (see the derivation above)
        warped, in_view = _warp(sample, depth, sample["color_o"], t03)
        warped_disp, _ = _warp(sample, depth, disp_o[..., None], t03)
        # Visible: in view and left-right consistent (excludes occlusions and samples straddling a depth edge).
        visible = in_view & (np.abs(warped_disp[..., 0] - disp_s) < 0.25)
        assert visible.mean() > 0.6

        def error(warped_color, mask=visible):
            return float(np.abs(warped_color - sample["color_s"]).mean(-1)[mask].mean())

        err = error(warped)
        wrong_sign, wrong_in_view = _warp(sample, depth, sample["color_o"], -t03)
        metric, metric_in_view = _warp(sample, depth * s, sample["color_o"], t03)  # as if K had been scaled by s
        err_sign, err_metric = error(wrong_sign, visible & wrong_in_view), error(metric, visible & metric_in_view)
        errors.append((round(err, 4), round(err_sign, 4), round(err_metric, 4)))
        # uint8 quantisation (~0.001) plus Lanczos ringing next to depth edges that the LR check keeps: measured
        # 0.0028-0.0041; for scale, a one-pixel shift of this texture differs by ~0.012 on average and a half-pixel
        # shift by ~0.006, so 0.01 passes only warps aligned to a fraction of a pixel. The wrong T sign measured
        # 0.07-0.13 and the unscaled depth 0.023-0.054.
        assert err < 0.01
        assert err_sign > 10 * err and err_metric > 4 * err
    print(f"\n{mode} flip={flip}: (error, wrong T sign, depth not divided by s) per scale (0.8, 1.4): {errors}")


# ---------------------------------------------------------------------------------------------------------------
# (d) eval_sample


def test_eval_sample():
    assert "tensorflow" not in sys.modules
    img_s, img_o = _pair(6)
    depth_gt = np.random.default_rng(0).uniform(0, 80, RAW).astype(np.float32)
    record = {"image_s": img_s, "image_o": img_o, "K": RAW_K.astype(np.float32), "baseline": np.float32(0.54),
              "direct": np.float32(1), "name": b"000000_10", "depth_gt": depth_gt, "disp_gt": depth_gt / 2}
    out = A.eval_sample(record, full_size=SMALL_FULL)
    assert set(out) == {"color_s", "color_o", "K", "inv_K", "T", "direct", "depth_gt", "disp_gt"}
    for key, img in (("color_s", img_s), ("color_o", img_o)):
        expected = np.asarray(Image.fromarray(img).resize((40, 24), Image.Resampling.LANCZOS)) / np.float32(255)
        assert out[key].shape == (24, 40, 3) and out[key].dtype == np.float32
        np.testing.assert_array_equal(out[key], expected.astype(np.float32))
    np.testing.assert_array_equal(out["depth_gt"], depth_gt)  # native resolution, not resized
    np.testing.assert_array_equal(out["disp_gt"], depth_gt / 2)
    np.testing.assert_allclose(out["K"][:3, :3], RAW_K * [[40 / 50], [24 / 30], [1]], rtol=1e-6)
    assert out["T"][0, 3] == np.float32(-0.54) and out["direct"] == 1
    plain = A.eval_sample({k: v for k, v in record.items() if k not in ("depth_gt", "disp_gt")}, full_size=(30, 50))
    assert "depth_gt" not in plain and "disp_gt" not in plain
    np.testing.assert_array_equal(plain["color_s"], img_s / np.float32(255))  # same size: values unchanged
