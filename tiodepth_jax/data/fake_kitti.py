"""Tiny fake KITTI raw and KITTI 2015 trees for tests, rendered with :mod:`tiodepth_jax.data.synthetic`.

The files have the real layout and formats (see :mod:`tiodepth_jax.data.kitti`), and their contents agree:

* KITTI raw: per date, ``calib_cam_to_cam.txt`` (every per-camera entry of the real file; P_rect_02 = [K | 0],
  P_rect_03 = [K | (-fx * baseline, 0, 0)], R_rect_00 and the velodyne R, T copied from the real 2011_09_26
  calibration) and ``calib_velo_to_cam.txt``. K is KITTI's fixed K scaled to the image size (row 0 by
  W / 1242, row 1 by H / 375) and the baseline 0.54 m; the scenes are rendered with exactly the written
  (7-digit) values. Each frame has the left / right images (uint8 RGB PNG), a velodyne scan and the improved
  ground truth PNGs. The fake images are not 1242 wide, so KITTI's fixed K does not describe them, and
  WIDTH_TO_BASELINE has no entry for their width: geometric checks use FakeKittiRaw.K and .baseline (the
  calibration's values).
* The velodyne scan holds one point per sampled left pixel (r, c) (about 15% of the pixels, never the last
  column: the original's duplicate handling ties pixel (r, W-1) to (r+1, 0)), at the pixel's true depth z on
  the ray of image coordinates (c + 1, r + 1) — the matlab convention of the export maps it back to (r, c) —
  taken from camera-2 coordinates into the velodyne frame with the inverse calibration. So
  ``generate_depth_map(..., vel_depth=False)`` reproduces the rendered depth at exactly those pixels. The scan
  also holds points behind the car at the same pixels (dropped by the export's x >= 0 test) and points that
  project outside the image.
  (For the right camera, ``cam=3``, the points are the same: their depths are those of the sampled 3D points,
  close to but not exactly the right view's rendered depth.)
* Improved ground truth (image_02 and image_03): the rendered depth of the view as uint16 ``round(256 * z)``,
  0 on the top quarter of the rows and on a random 30% of the pixels.
* KITTI 2015: the disparity PNGs must satisfy depth = KITTI2015_FX_BASELINE / disparity (spec §7.3) in the
  fake's own pixels, so the scenes use KITTI's K scaled to the image size and the baseline
  KITTI2015_FX_BASELINE / fx (3.42 m at the default width 196; the depths start at 8 m to keep disparities
  within a third of the width). The disparity is 0 on the top quarter of the rows and a random 20% of the
  pixels.
"""

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from tiodepth_jax.data import kitti, synthetic

# The real 2011_09_26 rectification and velodyne -> camera calibration.
_R_RECT_00 = np.array([9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
                       7.402527e-03, 4.351614e-03, 9.999631e-01]).reshape(3, 3)
_VELO_R = np.array([7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
                    9.998621e-01, 7.523790e-03, 1.480755e-02]).reshape(3, 3)
_VELO_T = np.array([-4.069766e-03, -7.631618e-02, -2.717806e-01])
_VELO_FRACTION, _BEHIND_FRACTION, _OUTSIDE_POINTS = 0.15, 0.1, 20
_IMPROVED_HOLES, _DISP_HOLES = 0.3, 0.2


@dataclasses.dataclass(frozen=True)
class FakeKittiRaw:
    """A fake KITTI raw tree.

    root: the tree (date folders, ``splits/``). train_split, test_split: ``<root>/splits/{train,test}.txt``;
    train_lines (every frame 'l', every other frame also 'r'), test_lines (every frame 'l') their lines.
    K: (3, 3) float64 intrinsics of both rectified cameras (P_rect_02[:, :3]); baseline: metres.
    For each test line: depth_l (H, W) float32 true z-depth of the left view, velo_mask (H, W) bool the pixels
    where the velodyne points land.
    """

    root: Path
    train_split: Path
    test_split: Path
    train_lines: tuple[kitti.SplitLine, ...]
    test_lines: tuple[kitti.SplitLine, ...]
    K: np.ndarray
    baseline: float
    depth_l: tuple[np.ndarray, ...]
    velo_mask: tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class FakeKitti2015:
    """A fake KITTI 2015 tree: ``<root>/training/{image_2,image_3,disp_occ_0}/<i:06d>_10.png``, i < count.

    K: (3, 3) float64; baseline: metres (fx * baseline = KITTI2015_FX_BASELINE). Per index: depth (H, W)
    float32 true z-depth of the left view, disp (H, W) float32 its disparity KITTI2015_FX_BASELINE / depth,
    valid (H, W) bool the pixels where the PNG stores it (0 elsewhere).
    """

    root: Path
    K: np.ndarray
    baseline: float
    depth: tuple[np.ndarray, ...]
    disp: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]


def _as_written(values) -> np.ndarray:
    """float64 values as a calibration file written with ``%e`` (7 significant digits) reads them back."""
    return np.array([float(f"{v:e}") for v in np.ravel(values)]).reshape(np.shape(values))


def _calib_line(key: str, values) -> str:
    return f"{key}: " + " ".join(f"{v:e}" for v in np.ravel(values)) + "\n"


def _kitti_intrinsics(size: tuple[int, int]) -> np.ndarray:
    """KITTI's fixed K scaled to size (H, W), as written to (and read back from) a calibration file."""
    height, width = size
    k = kitti.KITTI_K * np.array([[width / 1242], [height / 375], [1.0]])
    return _as_written(k)


def _write_calibration(date_dir: Path, size: tuple[int, int], k: np.ndarray, baseline: float) -> None:
    """calib_cam_to_cam.txt (cameras 0 and 2 at the origin, 1 and 3 at x = baseline) and calib_velo_to_cam.txt."""
    height, width = size
    text = "calib_time: 09-Jan-2012 13:57:47\n" + _calib_line("corner_dist", [9.95e-2])
    for cam in range(4):
        translation = np.array([-baseline if cam % 2 else 0.0, 0.0, 0.0])  # camera 0 -> camera cam
        projection = np.hstack([k, k @ translation[:, None]])
        text += (_calib_line(f"S_0{cam}", [width, height]) + _calib_line(f"K_0{cam}", k)
                 + _calib_line(f"D_0{cam}", np.zeros(5)) + _calib_line(f"R_0{cam}", np.eye(3))
                 + _calib_line(f"T_0{cam}", translation) + _calib_line(f"S_rect_0{cam}", [width, height])
                 + _calib_line(f"R_rect_0{cam}", _R_RECT_00 if cam == 0 else np.eye(3))
                 + _calib_line(f"P_rect_0{cam}", projection))
    date_dir.mkdir(parents=True, exist_ok=True)
    (date_dir / "calib_cam_to_cam.txt").write_text(text)
    (date_dir / "calib_velo_to_cam.txt").write_text(
        "calib_time: 15-Mar-2012 11:37:16\n" + _calib_line("R", _VELO_R) + _calib_line("T", _VELO_T)
        + _calib_line("delta_f", [0.0, 0.0]) + _calib_line("delta_c", [0.0, 0.0]))


def _camera_to_velodyne() -> np.ndarray:
    """(4, 4) inverse of R_rect_00 · [R | T]: rectified camera-0 (= camera-2, P_rect_02 = [K | 0]) -> velodyne."""
    velo_to_cam, rectify = np.eye(4), np.eye(4)
    velo_to_cam[:3, :3], velo_to_cam[:3, 3] = _as_written(_VELO_R), _as_written(_VELO_T)
    rectify[:3, :3] = _as_written(_R_RECT_00)
    return np.linalg.inv(rectify @ velo_to_cam)


def _back_project(u, v, z, k: np.ndarray) -> np.ndarray:
    """Camera points (N, 4) homogeneous float64 at image coordinates (u, v) (N,) and z-depth (N,)."""
    return np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z, np.ones_like(z)], axis=1)


def _velodyne_scan(depth: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float32 scan (shuffled) for the left depth (H, W), and the (H, W) bool mask of the pixels it fills."""
    height, width = depth.shape
    mask = rng.random(depth.shape) < _VELO_FRACTION
    mask[:, -1] = False
    rows, cols = np.nonzero(mask)
    u, v, z = cols + 1.0, rows + 1.0, depth[rows, cols].astype(np.float64)
    behind = rng.random(len(z)) < _BEHIND_FRACTION
    out_u = np.where(rng.random(_OUTSIDE_POINTS) < 0.5, rng.uniform(-30, -5, _OUTSIDE_POINTS),
                     rng.uniform(width + 5, width + 30, _OUTSIDE_POINTS))
    out_v, out_z = rng.uniform(0, height, _OUTSIDE_POINTS), rng.uniform(5, 50, _OUTSIDE_POINTS)
    camera = np.concatenate([_back_project(u, v, z, k), _back_project(u[behind], v[behind], -z[behind], k),
                             _back_project(out_u, out_v, out_z, k)])
    points = (_camera_to_velodyne() @ camera.T).T
    points[:, 3] = rng.random(len(points))  # reflectance
    return rng.permutation(points).astype(np.float32), mask


def _write_rgb(path: Path, color: np.ndarray) -> None:
    """Save (H, W, 3) float colours in [0, 1] as an 8-bit RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(color, 0, 1) * 255).astype(np.uint8)).save(path)


def _write_uint16(path: Path, values: np.ndarray, valid: np.ndarray) -> None:
    """Save (H, W) float values as the 16-bit PNG ``round(256 * value)`` where valid, 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(valid, np.round(values * 256.0), 0).astype(np.uint16)).save(path)


def _holes(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: True on the top quarter of the rows and on a random ``fraction`` of the other pixels."""
    holes = rng.random(shape) < fraction
    holes[: shape[0] // 4] = True
    return holes


def _write_split(path: Path, lines: list[kitti.SplitLine]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def make_fake_kitti_raw(root, *, size: tuple[int, int] = (56, 196), dates=("2011_09_26",), drives=(1, 2),
                        frames: int = 3, seed: int = 0) -> FakeKittiRaw:
    """Write a fake KITTI raw tree under ``root``: ``frames`` frames (0, 1, ...) of each drive of each date.

    size: (H, W) of the images (S_rect_02). Deterministic for a given seed. See the module docstring.
    """
    root = Path(root)
    k = _kitti_intrinsics(size)
    baseline = float(_as_written(kitti.KITTI_BASELINE * k[0, 0]) / k[0, 0])
    cfg = synthetic.SceneConfig(height=size[0], width=size[1], fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2],
                                baseline=baseline)
    train, test, depths, masks = [], [], [], []
    for date in dates:
        _write_calibration(root / date, size, k, baseline)
        for drive in drives:
            folder = f"{date}/{date}_drive_{drive:04d}_sync"
            for frame in range(frames):
                line = kitti.SplitLine(folder, frame, "l")
                index = len(test)
                rng = np.random.default_rng([seed, index])
                pair = synthetic.render_pair(cfg, seed * 100_003 + index)
                _write_rgb(kitti.image_path(root, line), pair["color_l"])
                _write_rgb(kitti.image_path(root, line, other=True), pair["color_r"])
                scan, mask = _velodyne_scan(pair["depth_l"], k, rng)
                velo_path = kitti.velodyne_path(root, line)
                velo_path.parent.mkdir(parents=True, exist_ok=True)
                scan.tofile(velo_path)
                for side in ("l", "r"):
                    _write_uint16(kitti.improved_gt_path(root, kitti.SplitLine(folder, frame, side)),
                                  pair[f"depth_{side}"], ~_holes(size, _IMPROVED_HOLES, rng))
                train.append(line)
                if frame % 2 == 0:
                    train.append(kitti.SplitLine(folder, frame, "r"))
                test.append(line)
                depths.append(pair["depth_l"])
                masks.append(mask)
    train_split, test_split = root / "splits" / "train.txt", root / "splits" / "test.txt"
    _write_split(train_split, train)
    _write_split(test_split, test)
    return FakeKittiRaw(root=root, train_split=train_split, test_split=test_split, train_lines=tuple(train),
                        test_lines=tuple(test), K=k, baseline=baseline, depth_l=tuple(depths),
                        velo_mask=tuple(masks))


def make_fake_kitti2015(root, *, size: tuple[int, int] = (56, 196), count: int = 3, seed: int = 0) -> FakeKitti2015:
    """Write a fake KITTI 2015 training set of ``count`` pairs under ``root`` (see the module docstring)."""
    root = Path(root)
    k = _kitti_intrinsics(size)
    baseline = kitti.KITTI2015_FX_BASELINE / k[0, 0]
    cfg = synthetic.SceneConfig(height=size[0], width=size[1], fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2],
                                baseline=baseline, min_depth=8.0, max_depth=80.0)
    depths, disps, valids = [], [], []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        pair = synthetic.render_pair(cfg, seed * 100_003 + index)
        left, right, disp_path = kitti.kitti2015_paths(root, index)
        _write_rgb(left, pair["color_l"])
        _write_rgb(right, pair["color_r"])
        disp = (kitti.KITTI2015_FX_BASELINE / pair["depth_l"]).astype(np.float32)
        valid = ~_holes(size, _DISP_HOLES, rng) & (disp * 256 < 65535.5)
        _write_uint16(disp_path, disp, valid)
        depths.append(pair["depth_l"])
        disps.append(disp)
        valids.append(valid)
    return FakeKitti2015(root=root, K=k, baseline=baseline, depth=tuple(depths), disp=tuple(disps),
                         valid=tuple(valids))
