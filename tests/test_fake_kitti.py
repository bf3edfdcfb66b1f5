"""The fake KITTI raw and KITTI 2015 trees are consistent: calibration, images, velodyne scans and ground truth."""

import numpy as np
import pytest
from PIL import Image

from tiodepth_jax.data import fake_kitti, kitti


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fake_kitti.make_fake_kitti_raw(tmp_path_factory.mktemp("kitti"))


@pytest.fixture(scope="module")
def fake2015(tmp_path_factory):
    return fake_kitti.make_fake_kitti2015(tmp_path_factory.mktemp("kitti2015"))


def _calib(fake, line):
    return kitti.read_calib_file(kitti.calib_dir(fake.root, line) / "calib_cam_to_cam.txt")


def _read_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image, np.float32) / 255


def _median_warp_error(left, right, disparity, valid=None) -> float:
    """Median over in-view pixels of |left - right sampled at (x - disparity)| (linear interpolation)."""
    height, width = disparity.shape
    x = np.arange(width)[None, :] - disparity
    in_view = (x >= 0) & (x <= width - 1) & (True if valid is None else valid)
    x0 = np.clip(np.floor(x).astype(int), 0, width - 2)
    a = np.clip(x - x0, 0, 1)[..., None]
    rows = np.arange(height)[:, None]
    warped = right[rows, x0] * (1 - a) + right[rows, x0 + 1] * a
    return float(np.median(np.abs(warped - left).mean(-1)[in_view]))


def test_layout_and_splits(fake):
    assert kitti.read_split(fake.train_split) == list(fake.train_lines)
    assert kitti.read_split(fake.test_split) == list(fake.test_lines)
    assert len(fake.test_lines) == 6 and {line.side for line in fake.test_lines} == {"l"}
    assert {line.side for line in fake.train_lines} == {"l", "r"}
    assert fake.test_lines[0].folder == "2011_09_26/2011_09_26_drive_0001_sync"
    for line in fake.train_lines:
        for path in (kitti.image_path(fake.root, line), kitti.image_path(fake.root, line, other=True),
                     kitti.velodyne_path(fake.root, line), kitti.improved_gt_path(fake.root, line)):
            assert path.is_file(), path


def test_images_have_the_calibrated_size(fake):
    line = fake.test_lines[0]
    calib = _calib(fake, line)
    width, height = calib["S_rect_02"].astype(int)
    assert (height, width) == (56, 196)
    np.testing.assert_array_equal(calib["P_rect_02"].reshape(3, 4)[:, :3], fake.K)
    for path in (kitti.image_path(fake.root, line), kitti.image_path(fake.root, line, other=True)):
        assert _read_rgb(path).shape == (height, width, 3)
    assert kitti.read_depth_png(kitti.improved_gt_path(fake.root, line)).shape == (height, width)


def test_velodyne_reprojects_to_the_rendered_depth(fake):
    """vel_depth=False gives the camera-2 z: the rendered depth, exactly at the sampled pixels."""
    for line, depth, mask in zip(fake.test_lines, fake.depth_l, fake.velo_mask):
        gt = kitti.generate_depth_map(kitti.calib_dir(fake.root, line), kitti.velodyne_path(fake.root, line))
        np.testing.assert_array_equal(gt > 0, mask)
        assert 0.1 < mask.mean() < 0.2
        np.testing.assert_allclose(gt[mask], depth[mask], rtol=1e-3)
    scan = kitti.load_velodyne(kitti.velodyne_path(fake.root, fake.test_lines[0]))
    assert (scan[:, 0] < 0).sum() > 0 and len(scan) > fake.velo_mask[0].sum()  # points behind, and outside


def test_velodyne_depth_is_the_forward_distance(fake):
    """vel_depth=True: the velodyne x of the point at the pixel's depth on the ray of (col + 1, row + 1)."""
    line = fake.test_lines[0]
    directory = kitti.calib_dir(fake.root, line)
    velo = kitti.read_calib_file(directory / "calib_velo_to_cam.txt")
    rectify_velo = np.eye(4)
    rectify_velo[:3, :3] = _calib(fake, line)["R_rect_00"].reshape(3, 3) @ velo["R"].reshape(3, 3)
    rectify_velo[:3, 3] = _calib(fake, line)["R_rect_00"].reshape(3, 3) @ velo["T"]
    rows, cols = np.nonzero(fake.velo_mask[0])
    z = fake.depth_l[0][rows, cols].astype(np.float64)
    k = fake.K
    camera = np.stack([(cols + 1 - k[0, 2]) * z / k[0, 0], (rows + 1 - k[1, 2]) * z / k[1, 1], z, np.ones_like(z)])
    forward = (np.linalg.inv(rectify_velo) @ camera)[0]
    gt = kitti.generate_depth_map(directory, kitti.velodyne_path(fake.root, line), vel_depth=True)
    np.testing.assert_array_equal(gt > 0, fake.velo_mask[0])
    np.testing.assert_allclose(gt[rows, cols], forward, rtol=1e-5)


def test_left_right_related_by_the_calibrated_baseline(fake):
    line = fake.test_lines[0]
    calib = _calib(fake, line)
    p2, p3 = calib["P_rect_02"].reshape(3, 4), calib["P_rect_03"].reshape(3, 4)
    baseline = -p3[0, 3] / p3[0, 0]
    assert baseline == pytest.approx(fake.baseline, rel=1e-6) and baseline == pytest.approx(0.54, rel=1e-6)
    left, right = _read_rgb(kitti.image_path(fake.root, line)), _read_rgb(kitti.image_path(fake.root, line, True))
    scales = [0.8, 0.9, 1.0, 1.1, 1.2]
    errors = [_median_warp_error(left, right, p2[0, 0] * baseline * s / fake.depth_l[0]) for s in scales]
    assert np.argmin(errors) == 2 and errors[2] < 3e-3, errors


def test_improved_ground_truth_is_the_quantised_depth(fake):
    for line, depth in zip(fake.test_lines, fake.depth_l):
        gt = kitti.read_depth_png(kitti.improved_gt_path(fake.root, line))
        valid = gt > 0
        assert not valid[:14].any() and 0.5 < valid[14:].mean() < 0.9
        np.testing.assert_allclose(gt[valid], depth[valid], atol=1 / 512 + 1e-6)


def test_generation_is_deterministic(fake, tmp_path):
    again = fake_kitti.make_fake_kitti_raw(tmp_path)
    line = fake.test_lines[-1]
    for path in (kitti.image_path, kitti.velodyne_path, kitti.improved_gt_path):
        assert path(fake.root, line).read_bytes() == path(again.root, line).read_bytes()
    other = fake_kitti.make_fake_kitti_raw(tmp_path / "other", seed=1, dates=("2011_09_28",), drives=(5,), frames=1)
    assert other.test_lines == (kitti.SplitLine("2011_09_28/2011_09_28_drive_0005_sync", 0, "l"),)
    assert not np.array_equal(other.depth_l[0], fake.depth_l[0])


def test_kitti2015_disparity_gives_the_depth(fake2015):
    assert fake2015.K[0, 0] * fake2015.baseline == pytest.approx(kitti.KITTI2015_FX_BASELINE)
    for index, (depth, disp, valid) in enumerate(zip(fake2015.depth, fake2015.disp, fake2015.valid)):
        left_path, right_path, disp_path = kitti.kitti2015_paths(fake2015.root, index)
        stored = kitti.read_kitti2015_disparity(disp_path)
        np.testing.assert_array_equal(stored > 0, valid)
        assert 0.5 < valid.mean() < 0.7
        np.testing.assert_allclose(stored[valid], disp[valid], atol=1 / 512 + 1e-6)
        np.testing.assert_allclose(kitti.KITTI2015_FX_BASELINE / stored[valid], depth[valid], rtol=2e-3)
        left, right = _read_rgb(left_path), _read_rgb(right_path)
        assert left.shape == right.shape == (56, 196, 3)
        errors = [_median_warp_error(left, right, stored * s, valid) for s in (0.9, 1.0, 1.1)]
        assert np.argmin(errors) == 1 and errors[1] < 3e-3, errors
