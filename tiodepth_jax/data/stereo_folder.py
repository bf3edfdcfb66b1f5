"""The stereo-folder format: a user's own rectified stereo footage, as the ``stereo_folder`` dataset reads it.

Layout (``<root>`` is what ``python -m tiodepth_jax.data.build stereo_folder --root`` is given)::

    <root>/calibration.yaml                  the camera: fx, fy, cx, cy, baseline (below)
    <root>/<split>/left/<stem>.png|.jpg      left images (rectified)
    <root>/<split>/right/<stem>.<ext>        right images: the same stem as the left image (any image suffix)
    <root>/<split>/depth/<stem>.npy|.png     optional: ground-truth depth of the left image, in metres
    <root>/<split>/calibration.yaml          optional: replaces the root calibration for this split

Every non-hidden folder of ``<root>`` is a split, named by the folder (letters, digits and '_' only: ``train``,
``test``, ...). A split holds either one sequence directly (``left/``, ``right/``, ``depth/`` as above) or, when it has no
``left/`` folder, sequence folders ``<root>/<split>/<sequence>/{left,right,depth}/`` — each with an optional
``<root>/<split>/<sequence>/calibration.yaml``. The nearest ``calibration.yaml`` applies (sequence, then
split, then root); each file is complete (no merging of keys).

``calibration.yaml`` holds these keys, numbers::

    fx: 721.5        # focal lengths in pixels, at the resolution of the stored images (> 0)
    fy: 721.5
    cx: 609.6        # principal point of the LEFT camera in pixels (inside the image)
    cy: 172.9
    baseline: 0.54   # distance between the two cameras in metres (> 0); the right camera is at +x
    doffs: 0.0       # optional (default 0): the right camera's cx minus the left's, in pixels

Rectified cameras share fx, fy and cy; their principal points may differ along x by ``doffs`` (Middlebury's
name): ``cx_right = cx + doffs``, and a point at depth Z appears at ``x_left - x_right = d`` with
``Z = fx * baseline / (d + doffs)``. Instead of ``doffs`` the right camera's ``cx_right`` may be given; the
optional ``fx_right``, ``fy_right`` and ``cy_right`` must equal ``fx``, ``fy`` and ``cy`` (else the pair is not
rectified and the file is refused).

The build aligns the two principal points (:func:`alignment`), so that every consumer sees ``doffs = 0`` and
disparity ``fx * baseline / Z``: it keeps ``W - |floor(doffs)|`` columns of each view (minus one when doffs
is fractional), the left view's columns unshifted and the right view's moved by ``doffs`` pixels (the
fractional part resampled bicubically), and stores K with the left camera's cx of the kept columns. The
kept columns of the left image (and of its depth) are recorded in the dataset (``calibration.json``).

Images: ``.png``, ``.jpg`` or ``.jpeg`` (any case); 8-bit RGB files are stored as they are, others (grey,
palette, alpha, 16-bit) converted to RGB; both images of a pair have the same size. Depth
files: ``.npy`` with a 2-D float array, or a 16-bit PNG holding metres * 256 (the KITTI convention); the size of
the left image; non-finite values and values <= 0 mean "no ground truth" and are stored as 0. When a sequence
has a ``depth/`` folder, every left image needs its depth file. Hidden files (name starting with '.') are
ignored; any other file in ``left/``, ``right/`` or ``depth/`` must fit the rules above.

Pairs are matched by stem and listed in sorted order of ``(sequence, stem)``. A pair's record name is
``"<stem> <side>"`` or ``"<sequence>/<stem> <side>"`` (side ``l`` or ``r``). Errors name the bad file.
The records built from it are described in :class:`tiodepth_jax.data.builders.StereoFolder`.
"""

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tiodepth_jax.data.kitti import DataFileError, read_depth_png

CALIBRATION_FILE = "calibration.yaml"
CALIBRATION_KEYS = ("fx", "fy", "cx", "cy", "baseline")
RIGHT_CAMERA_KEYS = ("fx_right", "fy_right", "cy_right")  # optional, must equal fx, fy, cy
OFFSET_KEYS = ("doffs", "cx_right")                       # optional: cx_right = cx + doffs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEPTH_SUFFIXES = (".npy", ".png")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A rectified stereo camera: intrinsics in pixels at the stored image size, baseline in metres."""

    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    path: Path
    doffs: float = 0.0

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` of the left camera."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The columns kept to make the principal points coincide: left ``[left_start, left_start + width)``,
    right sampled at ``x + right_start`` (fractional when doffs is) for x in ``[0, width)``."""

    left_start: int
    right_start: float
    width: int

    def K(self, calib: Calibration) -> np.ndarray:
        """The shared K of the aligned views: the left camera's with cx moved by the cropped columns."""
        K = calib.K
        K[0, 2] -= self.left_start
        return K


def alignment(doffs: float, width: int) -> Alignment:
    """Crop (and sub-pixel shift) that gives both views the left camera's principal point.

    With n = floor(doffs) and f = doffs - n: the left view keeps columns ``[max(-n, 0), ...)``, the right view is
    sampled at ``x + max(n, 0) + f``, both ``width - |n| - (f > 0)`` wide. Then cx_right - right_start =
    cx + doffs - max(n, 0) - f = cx - max(-n, 0) = cx_left - left_start. ValueError if nothing is left.
    """
    n = math.floor(doffs)
    f = doffs - n
    kept = width - abs(n) - (1 if f > 0 else 0)
    if kept < 1:
        raise ValueError(f"doffs {doffs} leaves no columns of a {width}-pixel-wide image")
    return Alignment(left_start=max(-n, 0), right_start=max(n, 0) + f, width=kept)


def align_pair(left: Image.Image, right: Image.Image, doffs: float) -> tuple[Image.Image, Image.Image, Alignment]:
    """Both views of a pair cropped (and the right one shifted) by :func:`alignment` (doffs 0: unchanged)."""
    a = alignment(doffs, left.width)
    if doffs == 0:
        return left, right, a
    left = left.crop((a.left_start, 0, a.left_start + a.width, left.height))
    if a.right_start == int(a.right_start):
        start = int(a.right_start)
        right = right.crop((start, 0, start + a.width, right.height))
    else:  # PIL maps output pixel centres x + 0.5 to x + 0.5 + right_start in the input
        right = right.transform((a.width, right.height), Image.Transform.AFFINE,
                                (1, 0, a.right_start, 0, 1, 0), resample=Image.Resampling.BICUBIC)
    return left, right, a


@dataclasses.dataclass(frozen=True)
class StereoPair:
    """One rectified pair: ``name`` (``"[<sequence>/]<stem>"``), the image files, the depth file or None."""

    name: str
    left: Path
    right: Path
    depth: Path | None
    calibration: Calibration


def _raise(error: DataFileError) -> None:
    raise error


def read_calibration(path) -> Calibration:
    """Parse a ``calibration.yaml``; DataFileError naming the file and the bad key or value."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataFileError(path, f"cannot read calibration file ({err})") from err
    if not isinstance(data, dict):
        raise DataFileError(path, f"expected a mapping with keys {', '.join(CALIBRATION_KEYS)}")
    optional = RIGHT_CAMERA_KEYS + OFFSET_KEYS
    missing = [k for k in CALIBRATION_KEYS if k not in data]
    unknown = sorted(str(k) for k in data if k not in CALIBRATION_KEYS + optional)
    if missing or unknown:
        parts = ([f"missing key(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
        raise DataFileError(path, f"{'; '.join(parts)} (expected {', '.join(CALIBRATION_KEYS)}; optional "
                                  f"{', '.join(optional)})")
    for key in (k for k in CALIBRATION_KEYS + optional if k in data):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataFileError(path, f"{key} must be a finite number, got {value!r}")
        if key in ("fx", "fy", "baseline") and value <= 0:
            raise DataFileError(path, f"{key} must be > 0, got {value!r}")
    for key in (k for k in RIGHT_CAMERA_KEYS if k in data):
        left_key = key.removesuffix("_right")
        if not math.isclose(data[key], data[left_key], rel_tol=1e-6, abs_tol=1e-9):
            raise DataFileError(path, f"{key} {data[key]} differs from {left_key} {data[left_key]}: rectified "
                                      f"cameras share fx, fy and cy (rectify the images first)")
    doffs = float(data.get("doffs", 0.0))
    if "cx_right" in data:
        from_cx = float(data["cx_right"]) - float(data["cx"])
        if "doffs" in data and not math.isclose(doffs, from_cx, rel_tol=1e-6, abs_tol=1e-6):
            raise DataFileError(path, f"doffs {doffs} disagrees with cx_right - cx = {from_cx}")
        doffs = from_cx
    return Calibration(**{k: float(data[k]) for k in CALIBRATION_KEYS}, path=path, doffs=doffs)


def list_splits(root) -> list[str]:
    """Names of the split folders of ``root`` (sorted); DataFileError if it has none or a name is invalid."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(root, "stereo folder root is not a directory")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not splits:
        raise DataFileError(root, "no split folders (expected e.g. train/left, train/right)")
    for split in splits:
        if not re.fullmatch(r"\w+", split, re.ASCII) or split.lower() == "all":
            raise DataFileError(root / split, "a split folder name must be letters, digits and '_' (not 'all')")
    return splits


def list_sequences(root, split: str) -> list[Path]:
    """The sequence folders of a split: the split folder itself if it has ``left/``, else its subfolders."""
    split_dir = Path(root) / split
    if (split_dir / "left").is_dir():
        return [split_dir]
    sequences = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sequences:
        raise DataFileError(split_dir, "split folder has neither left/ nor sequence folders with left/")
    for sequence in sequences:
        for side in ("left", "right"):
            if not (sequence / side).is_dir():
                raise DataFileError(sequence / side, "missing folder (a sequence needs left/ and right/)")
    return sequences


def has_depth(root) -> bool:
    """Whether any sequence of any split has a ``depth/`` folder."""
    return any((sequence / "depth").is_dir()
               for split in list_splits(root) for sequence in list_sequences(root, split))


def calibration_for(root, sequence: Path) -> Calibration:
    """The calibration of a sequence folder: the nearest ``calibration.yaml`` from the sequence up to ``root``."""
    root = Path(root)
    for folder in (sequence, *sequence.parents):
        if (folder / CALIBRATION_FILE).is_file():
            return read_calibration(folder / CALIBRATION_FILE)
        if folder == root:
            break
    raise DataFileError(root / CALIBRATION_FILE, f"missing calibration file (needed by {sequence})")


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], on_bad) -> dict[str, Path]:
    """Non-hidden files of ``folder`` keyed by stem; other suffixes and duplicate stems go to ``on_bad``."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() not in suffixes:
            on_bad(DataFileError(path, f"unexpected entry in {folder.name}/ (expected {'/'.join(suffixes)} files)"))
        elif path.stem in files:
            on_bad(DataFileError(path, f"same stem as {files[path.stem].name}"))
        else:
            files[path.stem] = path
    return files


def list_pairs(root, split: str, on_bad: Callable[[DataFileError], None] = _raise) -> list[StereoPair]:
    """All pairs of a split, sorted by (sequence, stem).

    Every file problem (a left image without its right image or depth file, a right image or depth file
    without its left image, an unexpected file) is passed to ``on_bad`` as a DataFileError naming the file, and
    the pair concerned is left out; the default raises it. Calibration errors always raise.
    """
    root = Path(root)
    pairs = []
    for sequence in list_sequences(root, split):
        calibration = calibration_for(root, sequence)
        prefix = "" if sequence == root / split else f"{sequence.name}/"
        left = _files_by_stem(sequence / "left", IMAGE_SUFFIXES, on_bad)
        right = _files_by_stem(sequence / "right", IMAGE_SUFFIXES, on_bad)
        with_depth = (sequence / "depth").is_dir()
        depth = _files_by_stem(sequence / "depth", DEPTH_SUFFIXES, on_bad) if with_depth else {}
        for stem in sorted(right.keys() - left.keys()):
            on_bad(DataFileError(right[stem], f"no left image {sequence / 'left' / stem}.*"))
        for stem in sorted(depth.keys() - left.keys()):
            on_bad(DataFileError(depth[stem], f"no left image {sequence / 'left' / stem}.*"))
        for stem, left_path in left.items():
            if stem not in right:
                on_bad(DataFileError(left_path, f"no right image {sequence / 'right' / stem}.*"))
            elif with_depth and stem not in depth:
                on_bad(DataFileError(left_path, f"no depth file {sequence / 'depth' / stem}.npy|.png"))
            else:
                pairs.append(StereoPair(prefix + stem, left_path, right[stem], depth.get(stem), calibration))
    return pairs


def check_pair(pair: StereoPair, left_size: tuple[int, int], right_size: tuple[int, int]) -> None:
    """DataFileError if the images' sizes (H, W) differ or the principal point lies outside the image."""
    if left_size != right_size:
        raise DataFileError(pair.right, f"image size {right_size[1]}x{right_size[0]} differs from the left image "
                                        f"{pair.left} ({left_size[1]}x{left_size[0]})")
    calib, (height, width) = pair.calibration, left_size
    if not (0 <= calib.cx <= width and 0 <= calib.cy <= height):
        raise DataFileError(calib.path, f"principal point ({calib.cx}, {calib.cy}) lies outside the "
                                        f"{width}x{height} image {pair.left}; fx, fy, cx, cy must be given at "
                                        f"the stored image size")
    try:
        alignment(calib.doffs, width)
    except ValueError as err:
        raise DataFileError(calib.path, f"{err} ({pair.left})") from None


def read_depth(path, size: tuple[int, int]) -> np.ndarray:
    """A depth file as (H, W) float32 metres with 0 where invalid; DataFileError unless its shape is ``size``."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        depth = read_depth_png(path)
    else:
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataFileError(path, f"cannot read depth array ({err})") from err
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            raise DataFileError(path, f"depth must be a 2-D numeric array, got {depth.dtype} {depth.shape}")
        depth = depth.astype(np.float32)
        depth[~np.isfinite(depth) | (depth < 0)] = 0
    if depth.shape != tuple(size):
        raise DataFileError(path, f"depth shape {depth.shape} differs from the left image size {tuple(size)}")
    return depth
