"""tiodepth_jax.metrics: KITTI depth / disparity metrics on small hand-computed cases (spec §8.1, §8.2)."""

import math

import numpy as np
import pytest

from tiodepth_jax import metrics as M


def test_depth_metrics_hand_computed():
    # Per pixel (g, p): (2, 1), (4, 4), (5, 6), (10, 8) -> |g-p| = 1, 0, 1, 2; ratios 2, 1, 1.2, 1.25.
    gt = np.array([[2.0, 4.0], [5.0, 10.0]])
    pred = np.array([[1.0, 4.0], [6.0, 8.0]])
    m = M.depth_metrics(pred, gt, mask_mode="valid")
    assert m["abs_rel"] == pytest.approx((1 / 2 + 0 + 1 / 5 + 2 / 10) / 4)  # 0.225
    assert m["sq_rel"] == pytest.approx((1 / 2 + 0 + 1 / 5 + 4 / 10) / 4)  # 0.275
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 4) / 4))
    assert m["rmse_log"] == pytest.approx(
        math.sqrt((math.log(2) ** 2 + 0 + math.log(1.2) ** 2 + math.log(1.25) ** 2) / 4))
    assert m["a1"] == 0.5  # 1 and 1.2 pass; 1.25 is not < 1.25
    assert m["a2"] == 0.75 and m["a3"] == 0.75  # only the ratio 2 fails (1.25**3 = 1.953125)
    assert m["scale"] == 1.0  # lower medians 4 / 4


def test_lower_median_and_median_scaling():
    assert M.lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0
    assert M.lower_median(np.array([3.0, 1.0, 2.0])) == 2.0
    gt = np.array([[2.0, 3.0], [6.0, 8.0]])
    pred = np.array([[1.0, 2.0], [3.0, 10.0]])
    # torch.median (lower): 3 / 2 = 1.5; the upper median would give 6 / 3 = 2, np.median 4.5 / 2.5 = 1.8.
    plain = M.depth_metrics(pred, gt, mask_mode="valid")
    assert plain["scale"] == 1.5
    assert plain["abs_rel"] == pytest.approx((1 / 2 + 1 / 3 + 3 / 6 + 2 / 8) / 4)  # scale reported, not applied
    scaled = M.depth_metrics(pred, gt, mask_mode="valid", median_scaling=True)
    # pred * 1.5 = 1.5, 3, 4.5, 15
    assert scaled["abs_rel"] == pytest.approx((0.5 / 2 + 0 + 1.5 / 6 + 7 / 8) / 4)  # 0.34375
    assert scaled["scale"] == 1.5


def test_mask_and_clamping():
    gt = np.array([[100.0, 0.4], [10.0, 20.0]])
    pred = np.array([[90.0, 5.0], [0.1, 20.0]])
    # 'valid': 0.4 <= min_depth is masked out; gt 100 -> 80, pred 90 -> 80, pred 0.1 -> 0.5.
    m = M.depth_metrics(pred, gt, mask_mode="valid", min_depth=0.5, max_depth=80.0)
    assert m["abs_rel"] == pytest.approx((0 + 9.5 / 10 + 0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(9.5 ** 2 / 3))
    assert m["a1"] == pytest.approx(2 / 3)
    # 'stereo2015': min_depth < gt < max_depth drops gt 100 as well.
    m = M.depth_metrics(pred, gt, mask_mode="stereo2015", min_depth=0.5, max_depth=80.0)
    assert m["abs_rel"] == pytest.approx(9.5 / 10 / 2)
    # The original's min_depth 0 keeps gt 0.4 (|0.4 - 5| / 0.4 = 11.5) and clamps pred 0.1 only to >= 0.
    m = M.depth_metrics(pred, gt, mask_mode="valid", min_depth=0.0, max_depth=80.0)
    assert m["abs_rel"] == pytest.approx((0 + 11.5 + 9.9 / 10 + 0) / 4)


def test_garg_and_eigen_crops_375x1242():
    assert M.crop_box("garg", 375, 1242) == (153, 371, 44, 1197)
    assert M.crop_box("eigen", 375, 1242) == (124, 342, 44, 1197)
    mask = M.depth_mask(np.ones((375, 1242)), min_depth=0.5, max_depth=80.0, crop="garg")
    assert mask.sum() == (371 - 153) * (1197 - 44)
    assert mask[153, 44] and mask[370, 1196] and not mask[152, 44] and not mask[371, 44]
    assert not mask[200, 43] and not mask[200, 1197]
    assert M.crop_mask((375, 1242), "none").all()


def test_crop_ignores_pixels_outside_it():
    gt = np.full((375, 1242), 10.0)
    pred = gt.copy()
    pred[:124] = 1.0  # wrong only above both crops
    pred[:, 1197:] = 50.0  # and right of them
    for crop in ("garg", "eigen"):
        m = M.depth_metrics(pred, gt, crop=crop)
        assert m["abs_rel"] == 0.0 and m["a1"] == 1.0
        assert M.disparity_metrics(40 / pred, 40 / gt, crop=crop)["epe_all"] == 0.0
    assert M.depth_metrics(pred, gt)["abs_rel"] > 0  # no crop by default


def test_empty_mask_raises():
    with pytest.raises(ValueError, match="no valid ground-truth pixel"):
        M.depth_metrics(np.ones((4, 4)), np.zeros((4, 4)), mask_mode="valid")
    with pytest.raises(ValueError, match="no valid ground-truth disparity"):
        M.disparity_metrics(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mask_mode"):
        M.depth_metrics(np.ones((4, 4)), np.ones((4, 4)), mask_mode="garg")
    with pytest.raises(ValueError, match="unknown crop 'centre'; known: garg, eigen, none"):
        M.depth_metrics(np.ones((4, 4)), np.ones((4, 4)), crop="centre")
    with pytest.raises(ValueError, match="shape"):
        M.depth_metrics(np.ones((4, 4)), np.ones((4, 5)))


def test_disparity_metrics_hand_computed():
    gt = np.array([[10.0, 0.0, np.inf], [50.0, 100.0, np.nan]])
    pred = np.array([[14.0, 7.0, 1.0], [52.0, 104.5, 1.0]])
    m = M.disparity_metrics(pred, gt)
    # gt 0, inf and NaN are invalid; errors 4, 2, 4.5 -> EPE 3.5; D1 outliers: 4 (> 3 and 40 %) only; 4.5 is
    # 4.5 % of 100.
    assert m["epe_all"] == pytest.approx(3.5)
    assert m["d1_all"] == pytest.approx(100 / 3)


def test_disparity_from_depth():
    depth = np.array([[2.0, 0.0, -1.0], [np.inf, np.nan, 8.0]], np.float32)
    np.testing.assert_array_equal(M.disparity_from_depth(depth, 40.0), [[20, 0, 0], [0, 0, 5]])


def test_resize_to_gt():
    # align_corners=False: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last pixel) -> 0, .25, .75, 1.
    np.testing.assert_allclose(M.resize_to_gt(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]])
    disp = M.resize_disparity_to_gt(np.full((3, 4), 2.0, np.float32), (6, 8))
    assert disp.shape == (6, 8) and np.all(disp == 4.0)


def test_mean_metrics():
    out = M.mean_metrics([{"a1": 1.0, "rmse": 2.0}, {"a1": 0.5, "rmse": 4.0}])
    assert out == {"a1": 0.75, "rmse": 3.0}
