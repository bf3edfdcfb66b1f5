"""KITTI layout, calibration, split files, velodyne ground truth (spec §7.4) and the GT export command."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiodepth_jax.data import export_gt, fake_kitti, kitti
from tiodepth_jax.data.kitti import DataFileError, SplitLine


def _entry(key: str, values) -> str:
    """One calibration line in the real files' format: ``key: 6.400000e+01 0.000000e+00 ...``."""
    return f"{key}: " + " ".join(f"{v:e}" for v in values) + "\n"


# Hand-built calibration: velodyne (x forward, y left, z up) -> camera X = -y, Y = -z, Z = x + tz; R_rect_00 = I;
# P_rect_02 = [[64, 0, 20, 32], [0, 64, 10, 0], [0, 0, 1, 0]], so with tz = 0.5 a point projects to
#   u = 20 + (32 - 64 y) / (x + 0.5),   v = 10 - 64 z / (x + 0.5),
# and lands on column round(u) - 1, row round(v) - 1. S_rect_02 = 40.9 x 20.7, truncated to W = 40, H = 20.
# Every number is dyadic, so the projections below are exact.
IDENTITY = [1, 0, 0, 0, 1, 0, 0, 0, 1]
CAM_TO_CAM = ("calib_time: 09-Jan-2012 13:57:47\n" + _entry("corner_dist", [0.0995]) + "\n"
              + _entry("S_rect_00", [40.9, 20.7]) + _entry("R_rect_00", IDENTITY) + _entry("S_rect_02", [40.9, 20.7])
              + _entry("P_rect_02", [64, 0, 20, 32, 0, 64, 10, 0, 0, 0, 1, 0]) + _entry("S_rect_03", [30, 10])
              + _entry("P_rect_03", [64, 0, 20, -32, 0, 64, 10, 0, 0, 0, 1, 0]))


def _velo_to_cam(tz: float) -> str:
    return ("calib_time: 15-Mar-2012 11:37:16\n" + _entry("R", [0, -1, 0, 0, 0, -1, 1, 0, 0])
            + _entry("T", [0, 0, tz]) + _entry("delta_f", [0, 0]))


# (x, y, z) velodyne points with tz = 0.5, and where they land: (row, col) -> (camera z, velodyne x).
POINTS = [
    (7.5, -1.0, -0.5),        # u = 32, v = 14: pixel (13, 31), z 8   } three points on one pixel:
    (3.5, -0.25, -0.25),      # u = 32, v = 14: pixel (13, 31), z 4   } the minimum is kept
    (15.5, -2.5, -1.0),       # u = 32, v = 14: pixel (13, 31), z 16  } (the last written value is 16)
    (-2.0, 0.5, 0.0),         # behind (x < 0): dropped; it would land on (9, 19) with z = -1.5
    (9.5, 0.5, 0.0),          # u = 20, v = 10: pixel (9, 19), z 10
    (7.5, 2.875, 1.125),      # u = 1, v = 1: pixel (0, 0)
    (7.5, 2.9375, 0.625),     # u = 0.5 -> round 0 -> column -1: dropped
    (7.5, 2.8125, 0.625),     # u = 1.5 -> round 2 -> column 1, v = 5: pixel (4, 1)
    (7.5, 2.6875, 0.5),       # u = 2.5 -> round 2 (halves to even) -> column 1, v = 6: pixel (5, 1)
    (7.5, -2.0, 0.25),        # u = 40, v = 8: pixel (7, 39), the last column
    (7.5, -2.125, 0.25),      # u = 41: column 40 = W, dropped
    (7.5, 0.0, -1.25),        # u = 24, v = 20: pixel (19, 23), the last row
    (7.5, 0.0, -1.375),       # v = 21: row 20 = H, dropped
    (7.5, 0.0, 1.1875),       # v = 0.5 -> round 0 -> row -1: dropped
]
EXPECTED = {(13, 31): (4.0, 3.5), (9, 19): (10.0, 9.5), (0, 0): (8.0, 7.5), (4, 1): (8.0, 7.5),
            (5, 1): (8.0, 7.5), (7, 39): (8.0, 7.5), (19, 23): (8.0, 7.5)}


def _write_calib(directory: Path, tz: float = 0.5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "calib_cam_to_cam.txt").write_text(CAM_TO_CAM)
    (directory / "calib_velo_to_cam.txt").write_text(_velo_to_cam(tz))
    return directory


def _write_scan(path: Path, points) -> Path:
    xyz = np.asarray(points, np.float32)
    np.hstack([xyz, np.full((len(xyz), 1), 0.25, np.float32)]).tofile(path)
    return path


def _expected_map(expected: dict, vel_depth: bool) -> np.ndarray:
    depth = np.zeros((20, 40), np.float32)
    for (row, col), values in expected.items():
        depth[row, col] = values[vel_depth]
    return depth


# ---------------------------------------------------------------------------------------------------------------
# (a) velodyne ground truth on a hand-built scan


@pytest.mark.parametrize("vel_depth", [False, True])
def test_generate_depth_map_hand_computed(tmp_path, vel_depth):
    calib = _write_calib(tmp_path / "2011_09_26")
    scan = _write_scan(tmp_path / "scan.bin", POINTS)
    depth = kitti.generate_depth_map(calib, scan, cam=2, vel_depth=vel_depth)
    assert depth.dtype == np.float32 and depth.shape == (20, 40)  # S_rect_02 truncated to integers
    np.testing.assert_array_equal(depth, _expected_map(EXPECTED, vel_depth))


def test_generate_depth_map_duplicates_do_not_depend_on_order(tmp_path):
    calib = _write_calib(tmp_path)
    maps = [kitti.generate_depth_map(calib, _write_scan(tmp_path / f"{i}.bin", np.roll(POINTS, i, axis=0)))
            for i in range(3)]
    for depth in maps:
        np.testing.assert_array_equal(depth, _expected_map(EXPECTED, False))


def test_generate_depth_map_right_camera_uses_p_rect_03_and_s_rect_02(tmp_path):
    calib = _write_calib(tmp_path)
    scan = _write_scan(tmp_path / "scan.bin", POINTS[:1])  # camera 3: u = 20 + (64 - 32) / 8 = 24, v = 14
    depth = kitti.generate_depth_map(calib, scan, cam=3)
    assert depth.shape == (20, 40)
    np.testing.assert_array_equal(depth, _expected_map({(13, 23): (8.0, 7.5)}, False))


def test_generate_depth_map_negative_depth_becomes_zero(tmp_path):
    calib = _write_calib(tmp_path, tz=-1.0)  # Z = x - 1: camera z < 0 for 0 <= x < 1
    # (0.5, 0.5, 0): Z = -0.5, u = (20 Z + 32 - 64 y) / Z = 20, v = 10 -> pixel (9, 19); (3, 0.5, 0): Z = 2, same
    # pixel. Camera z: min(-0.5, 2) = -0.5 -> 0. Velodyne x: min(0.5, 3) = 0.5.
    scan = _write_scan(tmp_path / "scan.bin", [(0.5, 0.5, 0.0), (3.0, 0.5, 0.0)])
    assert not kitti.generate_depth_map(calib, scan).any()
    np.testing.assert_array_equal(kitti.generate_depth_map(calib, scan, vel_depth=True),
                                  _expected_map({(9, 19): (0.0, 0.5)}, True))


@pytest.mark.parametrize("right_first", [True, False])
def test_generate_depth_map_keeps_the_originals_linear_index_quirk(tmp_path, right_first):
    """The original groups points by row * (W - 1) + col - 1: pixels (7, 39) and (8, 0) share index 311, and
    the group minimum goes to the pixel of the group's first point."""
    calib = _write_calib(tmp_path)
    at_7_39 = (7.5, -2.0, 0.25)  # z 8
    at_8_0 = (3.5, 1.6875, 0.0625)  # u = 20 + (32 - 108) / 4 = 1, v = 10 - 4 / 4 = 9: pixel (8, 0), z 4
    points = [at_7_39, at_8_0] if right_first else [at_8_0, at_7_39]
    depth = kitti.generate_depth_map(calib, _write_scan(tmp_path / "scan.bin", points))
    expected = {(7, 39): (4.0 if right_first else 8.0, 0.0), (8, 0): (4.0, 0.0)}
    np.testing.assert_array_equal(depth, _expected_map(expected, False))


def test_generate_depth_map_names_missing_files_and_keys(tmp_path):
    calib = _write_calib(tmp_path)
    scan = _write_scan(tmp_path / "scan.bin", POINTS)
    with pytest.raises(DataFileError, match="nope.bin"):
        kitti.generate_depth_map(calib, tmp_path / "nope.bin")
    (calib / "calib_velo_to_cam.txt").write_text("R: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(DataFileError, match=r"calib_velo_to_cam.txt.*'T'"):
        kitti.generate_depth_map(calib, scan)
    (calib / "calib_velo_to_cam.txt").unlink()
    with pytest.raises(DataFileError, match="calib_velo_to_cam.txt"):
        kitti.generate_depth_map(calib, scan)


def test_load_velodyne(tmp_path):
    points = np.arange(8, dtype=np.float32).reshape(2, 4)
    points.tofile(tmp_path / "a.bin")
    loaded = kitti.load_velodyne(tmp_path / "a.bin")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, points)  # reflectance kept
    np.arange(5, dtype=np.float32).tofile(tmp_path / "bad.bin")
    with pytest.raises(DataFileError, match="bad.bin"):
        kitti.load_velodyne(tmp_path / "bad.bin")
    with pytest.raises(DataFileError, match="missing.bin"):
        kitti.load_velodyne(tmp_path / "missing.bin")


# ---------------------------------------------------------------------------------------------------------------
# (b) calibration, splits, paths, intrinsics


def test_read_calib_file(tmp_path):
    path = _write_calib(tmp_path) / "calib_cam_to_cam.txt"
    calib = kitti.read_calib_file(path)
    assert "calib_time" not in calib  # not numeric
    assert set(calib) == {"corner_dist", "S_rect_00", "R_rect_00", "S_rect_02", "P_rect_02", "S_rect_03",
                          "P_rect_03"}
    assert calib["P_rect_02"].dtype == np.float64 and calib["P_rect_02"].shape == (12,)
    np.testing.assert_array_equal(calib["S_rect_02"], [40.9, 20.7])
    path.write_text("S_rect_02: 1 2\nno colon here\n")
    with pytest.raises(DataFileError, match=r"calib_cam_to_cam.txt.*line 2"):
        kitti.read_calib_file(path)
    with pytest.raises(DataFileError, match="absent.txt"):
        kitti.read_calib_file(tmp_path / "absent.txt")


def test_read_split(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("2011_09_26/2011_09_26_drive_0002_sync 69 l\n"
                    "2011_09_29/2011_09_29_drive_0071_sync 0000000012 r\n\n")
    assert kitti.read_split(path) == [SplitLine("2011_09_26/2011_09_26_drive_0002_sync", 69, "l"),
                                      SplitLine("2011_09_29/2011_09_29_drive_0071_sync", 12, "r")]
    assert str(kitti.read_split(path)[0]) == "2011_09_26/2011_09_26_drive_0002_sync 69 l"


@pytest.mark.parametrize("bad", ["2011_09_26/d 5", "2011_09_26/d 5 x", "2011_09_26/d five l", "2011_09_26/d -1 l",
                                 "2011_09_26/d 5 l extra"])
def test_read_split_errors_name_file_and_line(tmp_path, bad):
    path = tmp_path / "split.txt"
    path.write_text(f"2011_09_26/d 4 l\n{bad}\n")
    with pytest.raises(DataFileError, match=rf"split.txt: line 2: .*{bad!r}"):
        kitti.read_split(path)


def test_read_split_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="no_split.txt"):
        kitti.read_split(tmp_path / "no_split.txt")


def test_paths():
    folder = "2011_09_26/2011_09_26_drive_0002_sync"
    left, right = SplitLine(folder, 69, "l"), SplitLine(folder, 69, "r")
    assert kitti.image_path("/k", left) == Path(f"/k/{folder}/image_02/data/0000000069.png")
    assert kitti.image_path("/k", left, other=True) == Path(f"/k/{folder}/image_03/data/0000000069.png")
    assert kitti.image_path("/k", right) == Path(f"/k/{folder}/image_03/data/0000000069.png")
    assert kitti.image_path("/k", right, other=True, ext=".jpg") == Path(f"/k/{folder}/image_02/data/0000000069.jpg")
    assert kitti.velodyne_path("/k", left) == Path(f"/k/{folder}/velodyne_points/data/0000000069.bin")
    assert kitti.calib_dir("/k", left) == Path("/k/2011_09_26")
    assert kitti.improved_gt_path("/k", left) == Path(f"/k/{folder}/proj_depth/groundtruth/image_02/0000000069.png")
    assert kitti.kitti2015_paths("/s", 7) == (Path("/s/training/image_2/000007_10.png"),
                                              Path("/s/training/image_3/000007_10.png"),
                                              Path("/s/training/disp_occ_0/000007_10.png"))


def test_intrinsics_and_baseline(tmp_path):
    _write_calib(tmp_path / "2011_09_26")
    left = SplitLine("2011_09_26/2011_09_26_drive_0002_sync", 69, "l")
    right = SplitLine(left.folder, 69, "r")
    k, baseline = kitti.intrinsics_and_baseline(tmp_path, left, (375, 1242))
    np.testing.assert_array_equal(k, [[721.54, 0, 609.56], [0, 721.54, 172.85], [0, 0, 1]])
    assert baseline == 0.54 and k is not kitti.KITTI_K
    for line in (left, right):  # P_rect_02 / P_rect_03 share K here
        k, baseline = kitti.intrinsics_and_baseline(tmp_path, line, (375, 1242), fixed_k=False)
        np.testing.assert_array_equal(k, [[64, 0, 20], [0, 64, 10], [0, 0, 1]])
        assert k.dtype == np.float64 and baseline == pytest.approx(0.9982 * 0.54)
    assert kitti.intrinsics_and_baseline(tmp_path, left, (370, 1224), fixed_k=False)[1] == pytest.approx(1.0144 * 0.54)
    with pytest.raises(ValueError, match="width 196"):
        kitti.intrinsics_and_baseline(tmp_path, left, (56, 196), fixed_k=False)
    missing = SplitLine("2011_10_03/2011_10_03_drive_0027_sync", 0, "l")
    with pytest.raises(DataFileError, match="2011_10_03/calib_cam_to_cam.txt"):
        kitti.intrinsics_and_baseline(tmp_path, missing, (375, 1242), fixed_k=False)


# ---------------------------------------------------------------------------------------------------------------
# (c) 16-bit PNG ground truth


@pytest.mark.parametrize("reader", [kitti.read_depth_png, kitti.read_kitti2015_disparity])
def test_uint16_png_round_trip(tmp_path, reader):
    values = np.array([[0, 1, 256], [65535, 12345, 512]], np.uint16)
    Image.fromarray(values).save(tmp_path / "gt.png")
    decoded = reader(tmp_path / "gt.png")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values.astype(np.float32) / 256)
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / "eight_bit.png")
    with pytest.raises(DataFileError, match=r"eight_bit.png: .*16-bit"):
        reader(tmp_path / "eight_bit.png")
    with pytest.raises(DataFileError, match="absent.png"):
        reader(tmp_path / "absent.png")


# ---------------------------------------------------------------------------------------------------------------
# (d) the export command on a fake tree


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fake_kitti.make_fake_kitti_raw(tmp_path_factory.mktemp("kitti"), frames=2)


@pytest.mark.parametrize("kind", ["raw", "improved"])
def test_export_gt(fake, tmp_path, kind, capsys):
    out = tmp_path / "gt.npz"
    assert export_gt.main(["--root", str(fake.root), "--split", str(fake.test_split), "--kind", kind,
                           "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    data = np.load(out, allow_pickle=True)["data"]
    assert data.dtype == object and len(data) == len(fake.test_lines)
    for gt, line in zip(data, fake.test_lines):
        expected = (kitti.generate_depth_map(kitti.calib_dir(fake.root, line), kitti.velodyne_path(fake.root, line),
                                             cam=2, vel_depth=True) if kind == "raw"
                    else kitti.read_depth_png(kitti.improved_gt_path(fake.root, line)))
        assert gt.dtype == np.float32 and gt.shape == (56, 196) and gt.any()
        np.testing.assert_array_equal(gt, expected)


def test_export_gt_default_output(fake):
    out = export_gt.export_gt_depths(fake.root, fake.test_split, "improved")
    assert out == fake.root / "gt_depths_improved.npz" and out.exists()


def test_export_gt_missing_file_exits_2(fake, tmp_path):
    line = fake.test_lines[-1]
    missing = kitti.velodyne_path(fake.root, line)
    scan = missing.read_bytes()
    missing.unlink()
    try:
        result = subprocess.run([sys.executable, "-m", "tiodepth_jax.data.export_gt", "--root", str(fake.root),
                                 "--split", str(fake.test_split), "--kind", "raw", "--out", str(tmp_path / "gt.npz")],
                                capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    finally:
        missing.write_bytes(scan)
    assert result.returncode == 2
    error = [text for text in result.stderr.splitlines() if "error" in text]
    assert len(error) == 1 and str(missing) in error[0]
    assert not (tmp_path / "gt.npz").exists()
