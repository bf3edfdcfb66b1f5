"""KITTI raw and KITTI 2015 on disk: layout, split files, calibration, velodyne scans and ground truth (spec §7).

KITTI raw (``root`` holds the date folders)::

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt
    <root>/<date>/<date>_drive_<nnnn>_sync/image_02/data/<frame:010d>.png        left camera
    <root>/<date>/<date>_drive_<nnnn>_sync/image_03/data/<frame:010d>.png        right camera
    <root>/<date>/<date>_drive_<nnnn>_sync/velodyne_points/data/<frame:010d>.bin
    <root>/<date>/<date>_drive_<nnnn>_sync/proj_depth/groundtruth/image_02/<frame:010d>.png   improved GT

KITTI 2015: ``<root>/training/{image_2,image_3,disp_occ_0}/<index:06d>_10.png``.

A split file has one ``"<date>/<drive folder> <frame> <l|r>"`` line per sample (spec §7.2). Files that are
missing or cannot be parsed raise :class:`DataFileError`, whose message names the file.
"""

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image
from tiodepth_jax.errors import InputError

KITTI_K = np.array([[721.54, 0.0, 609.56], [0.0, 721.54, 172.85], [0.0, 0.0, 1.0]])  # fixed K (spec §7.3)
KITTI_BASELINE = 0.54  # metres
# The original's raw image width -> stereo baseline (metres) table, used when K comes from the calibration file.
WIDTH_TO_BASELINE = {1242: 0.9982 * 0.54, 1241: 0.9848 * 0.54, 1224: 1.0144 * 0.54, 1238: 0.9847 * 0.54,
                     1226: 0.9765 * 0.54, 1280: 0.54}
KITTI2015_FX_BASELINE = 0.54 * 721.54  # KITTI 2015: depth = KITTI2015_FX_BASELINE / disparity (spec §7.3)

_CAM_TO_CAM, _VELO_TO_CAM = "calib_cam_to_cam.txt", "calib_velo_to_cam.txt"
_SIDE_CAMERA = {"l": 2, "r": 3}


class DataFileError(InputError):
    """A dataset file is missing or unreadable; ``path`` is the file, ``reason`` what is wrong with it."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _os_reason(err: Exception) -> str:
    """The OS's short reason for a failed read ("No such file or directory"), else the exception's text."""
    return getattr(err, "strerror", None) or str(err)


@dataclasses.dataclass(frozen=True)
class SplitLine:
    """One split-file line: drive folder (``"<date>/<date>_drive_<nnnn>_sync"``), frame number, side 'l' / 'r'."""

    folder: str
    frame: int
    side: str

    def __str__(self) -> str:
        return f"{self.folder} {self.frame} {self.side}"


# ---------------------------------------------------------------------------------------------------------------
# Split files and paths


def read_split(path) -> list[SplitLine]:
    """Parse a split file of ``"<folder> <frame> <l|r>"`` lines (blank lines are skipped).

    Raises DataFileError naming the file (and the line number for a malformed line).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(path, f"cannot read split file ({_os_reason(err)})") from err
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split()
        if len(fields) != 3 or not (fields[1].isascii() and fields[1].isdigit()) or fields[2] not in _SIDE_CAMERA:
            raise DataFileError(path, f"line {number}: expected '<folder> <frame> <l|r>', got {raw!r}")
        lines.append(SplitLine(fields[0], int(fields[1]), fields[2]))
    return lines


def _camera(line: SplitLine, other: bool = False) -> int:
    """Camera number of the line's side (2 for 'l', 3 for 'r'), or of the other side when ``other``."""
    cam = _SIDE_CAMERA[line.side]
    return 5 - cam if other else cam


def image_path(root, line: SplitLine, other: bool = False, ext: str = ".png") -> Path:
    """``<root>/<folder>/image_0{2|3}/data/<frame:010d><ext>``: image_02 for 'l', image_03 for 'r'.

    other=True gives the other camera of the same frame (the stereo partner).
    """
    return Path(root) / line.folder / f"image_0{_camera(line, other)}" / "data" / f"{line.frame:010d}{ext}"


def velodyne_path(root, line: SplitLine) -> Path:
    """``<root>/<folder>/velodyne_points/data/<frame:010d>.bin``."""
    return Path(root) / line.folder / "velodyne_points" / "data" / f"{line.frame:010d}.bin"


def calib_dir(root, line: SplitLine) -> Path:
    """``<root>/<date>``: the folder of the line's calibration files."""
    return Path(root) / line.folder.split("/")[0]


def improved_gt_path(root, line: SplitLine) -> Path:
    """``<root>/<folder>/proj_depth/groundtruth/image_02/<frame:010d>.png`` (image_03 for an 'r' line)."""
    return (Path(root) / line.folder / "proj_depth" / "groundtruth" / f"image_0{_camera(line)}"
            / f"{line.frame:010d}.png")


def kitti2015_paths(root, index: int) -> tuple[Path, Path, Path]:
    """KITTI 2015 training pair ``index``: (left image, right image, disparity PNG), ``<index:06d>_10.png``."""
    training, name = Path(root) / "training", f"{index:06d}_10.png"
    return training / "image_2" / name, training / "image_3" / name, training / "disp_occ_0" / name


# ---------------------------------------------------------------------------------------------------------------
# Calibration, intrinsics and baseline


def read_calib_file(path) -> dict[str, np.ndarray]:
    """Parse a KITTI ``key: v1 v2 ...`` calibration file into float64 arrays.

    Entries whose value is not a list of numbers (e.g. ``calib_time``) and blank lines are skipped; a line
    without ':' or a missing file raises DataFileError naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(path, f"cannot read calibration file ({_os_reason(err)})") from err
    calib = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if ":" not in raw:
            raise DataFileError(path, f"line {number}: expected 'key: values', got {raw!r}")
        key, value = raw.split(":", 1)
        try:
            calib[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue
    return calib


def _calib_entry(calib: dict, key: str, shape: tuple, path) -> np.ndarray:
    """``calib[key]`` reshaped to ``shape``; DataFileError naming the file and key if absent or the wrong size."""
    value = calib.get(key)
    if value is None or value.size != int(np.prod(shape)):
        found = "missing" if value is None else f"has {value.size} values"
        raise DataFileError(path, f"calibration entry {key!r} {found}, expected {int(np.prod(shape))} numbers")
    return value.reshape(shape)


def intrinsics_and_baseline(root, line: SplitLine, raw_size: tuple[int, int],
                            fixed_k: bool = True) -> tuple[np.ndarray, float]:
    """K (3, 3) float64 at the raw image resolution and the stereo baseline in metres (spec §7.3).

    fixed_k: KITTI_K and KITTI_BASELINE, whatever the image (the original treats KITTI_K as the K of any raw
    image and scales it by full / raw size). Otherwise K = P_rect_02[:, :3] ('l') or P_rect_03[:, :3] ('r')
    from ``<root>/<date>/calib_cam_to_cam.txt`` and the baseline WIDTH_TO_BASELINE[raw_size[1]]
    (raw_size = (H, W) of the raw image); ValueError naming the width when the table has no entry for it.
    """
    if fixed_k:
        return KITTI_K.copy(), KITTI_BASELINE
    width = int(raw_size[1])
    if width not in WIDTH_TO_BASELINE:
        raise InputError(f"no baseline for raw image width {width} ({line}); the table knows widths "
                         f"{sorted(WIDTH_TO_BASELINE)}")
    path = calib_dir(root, line) / _CAM_TO_CAM
    projection = _calib_entry(read_calib_file(path), f"P_rect_0{_camera(line)}", (3, 4), path)
    return projection[:, :3].copy(), WIDTH_TO_BASELINE[width]


# ---------------------------------------------------------------------------------------------------------------
# Velodyne scans and the projected ground truth (spec §7.4)


def load_velodyne(path) -> np.ndarray:
    """The scan as (N, 4) float32 rows (x forward, y left, z up, reflectance); DataFileError if unreadable."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except OSError as err:
        raise DataFileError(path, f"cannot read velodyne scan ({_os_reason(err)})") from err
    if raw.size % 4:
        raise DataFileError(path, f"velodyne scan holds {raw.size} float32 values, not a multiple of 4")
    return raw.reshape(-1, 4)


def velodyne_projection(calib_dir, cam: int = 2) -> tuple[np.ndarray, tuple[int, int]]:
    """The (3, 4) float64 projection P_rect_0{cam} · R_rect_00 · [R | T]_velo→cam and the image size (H, W).

    The size is S_rect_02 (for both cameras, as in the original) truncated to integers.
    """
    cam_path, velo_path = Path(calib_dir) / _CAM_TO_CAM, Path(calib_dir) / _VELO_TO_CAM
    cam2cam, velo2cam = read_calib_file(cam_path), read_calib_file(velo_path)
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _calib_entry(velo2cam, "R", (3, 3), velo_path)
    velo_to_cam[:3, 3] = _calib_entry(velo2cam, "T", (3,), velo_path)
    rectify = np.eye(4)
    rectify[:3, :3] = _calib_entry(cam2cam, "R_rect_00", (3, 3), cam_path)
    projection = _calib_entry(cam2cam, f"P_rect_0{cam}", (3, 4), cam_path) @ rectify @ velo_to_cam
    width, height = _calib_entry(cam2cam, "S_rect_02", (2,), cam_path).astype(np.int32)
    return projection, (int(height), int(width))


def generate_depth_map(calib_dir, velo_path, cam: int = 2, vel_depth: bool = False) -> np.ndarray:
    """Project a velodyne scan into camera ``cam`` (2 left, 3 right): the sparse (H, W) float32 depth map.

    Monodepth2's export, reproduced step by step: points with velodyne x < 0 are dropped; the others are
    projected with :func:`velodyne_projection` and divided by their projective depth z (camera z); the value is z,
    or the velodyne x with ``vel_depth``; pixel coordinates are ``np.round`` (halves to even) minus 1 (the
    KITTI matlab convention: u in (0.5, 1.5) is column 0, u = 1.5 column 1) and points outside [0, W) x [0, H)
    dropped. Pixels hit by several points: the original assigns all values (the last one stays), then groups
    the points by the linear index ``row * (W - 1) + col - 1`` and writes each group's minimum at the pixel of
    its first point. That index is not one-to-one — pixels (r, W-1) and (r+1, 0) share it — and the quirk is
    kept. Finally negative values become 0; 0 means no point.
    """
    projection, (height, width) = velodyne_projection(calib_dir, cam)
    velo = load_velodyne(velo_path)
    velo = velo[velo[:, 0] >= 0]
    homogeneous = velo.copy()
    homogeneous[:, 3] = 1.0
    points = (projection @ homogeneous.T).T  # (N, 3) float64
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = points[:, :2] / points[:, 2:3]
    value = velo[:, 0].astype(np.float64) if vel_depth else points[:, 2]
    cols, rows = np.round(uv[:, 0]) - 1, np.round(uv[:, 1]) - 1
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    return _splat_min(rows[inside].astype(np.int64), cols[inside].astype(np.int64), value[inside],
                      (height, width))


def _splat_min(rows: np.ndarray, cols: np.ndarray, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Write point values (N,) at pixels (rows, cols) of a zero (H, W) map as the original does.

    Last value per pixel, then each group of the original's linear index ``row * (W - 1) + col - 1`` with more
    than one point gets its minimum at the pixel of its first point; negatives -> 0. Returns float32.
    """
    height, width = shape
    depth = np.zeros(height * width)
    pixel = rows * width + cols
    last = len(pixel) - 1 - np.unique(pixel[::-1], return_index=True)[1]
    depth[pixel[last]] = value[last]
    key = rows * (width - 1) + cols - 1
    _, first, group, count = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    group_min = np.full(len(first), np.inf)
    np.minimum.at(group_min, group, value)
    repeated = count > 1
    depth[pixel[first[repeated]]] = group_min[repeated]
    depth[depth < 0] = 0
    return depth.reshape(height, width).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# 16-bit PNG ground truth


def _read_uint16_png(path, what: str) -> np.ndarray:
    """A 16-bit grayscale PNG as (H, W) float32 divided by 256; DataFileError if missing or not 16-bit."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("I;16", "I;16B", "I"):
                raise DataFileError(path, f"{what} must be a 16-bit grayscale PNG, got mode {image.mode}")
            values = np.asarray(image, np.uint16)
    except OSError as err:
        raise DataFileError(path, f"cannot read {what} ({_os_reason(err)})") from err
    return values.astype(np.float32) / 256


def read_depth_png(path) -> np.ndarray:
    """Improved (KITTI depth) ground truth: uint16 PNG / 256 -> (H, W) float32 metres, 0 = invalid."""
    return _read_uint16_png(path, "depth PNG")


def read_kitti2015_disparity(path) -> np.ndarray:
    """KITTI 2015 disparity: uint16 PNG / 256 -> (H, W) float32 pixels, 0 = invalid."""
    return _read_uint16_png(path, "disparity PNG")
