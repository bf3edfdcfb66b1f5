"""Image files in, results out: listing and decoding images to float RGB; writing PNGs and PLY point clouds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tiodepth_jax.errors import InputError, InputNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(paths) -> list[Path]:
    """Expand files and folders (not recursively) into image files, in the order given, each folder sorted.

    A file is taken as given, whatever its extension; a folder contributes its files with an image
    extension (case-insensitive). A file reached twice is listed once. Raises InputNotFoundError for a
    path that does not exist and InputError for a folder without images.
    """
    images = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if is_image_file(f))
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {p}")
            images.extend(found)
        elif p.is_file():
            images.append(p)
        else:
            raise InputNotFoundError(f"input {p} does not exist")
    seen, unique = set(), []
    for f in images:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


_DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of the image `read_image` returns, from the file header only (no pixel decoding).

    Raises InputError naming the file when PIL cannot identify it.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            # A PNG whose eXIf chunk follows the pixel data would need a full decode to find it: skipped.
            header_exif = img.format != "PNG" or "exif" in img.info
            if header_exif and img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
    except _DECODE_ERRORS as e:
        raise InputError(f"cannot decode image {path}: {e}") from e
    return h, w


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to float32 RGB (H, W, 3) in [0, 1].

    EXIF orientation is applied (as `cv2.imread` does). 16-bit greyscale is scaled by 1/65535; every
    other mode goes through PIL's RGB conversion (alpha dropped, greyscale replicated, palettes expanded).
    Raises InputError naming the file when PIL cannot decode it.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(img, np.float32) / 65535.0  # (H, W)
                return np.repeat(grey[..., None], 3, axis=-1)
            return rgb_float(np.asarray(img.convert("RGB")))
    except _DECODE_ERRORS as e:
        raise InputError(f"cannot decode image {path}: {e}") from e


def rgb_float(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> float32 in [0, 1]: the conversion of every 8-bit image and video frame."""
    return np.asarray(rgb, np.float32) / 255.0


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB or (H, W) uint8 greyscale array as PNG."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ValueError(f"write_png expects (H, W[, 3]) uint8, got {rgb.dtype} {rgb.shape}")
    Image.fromarray(rgb).save(path, format="PNG")


@contextlib.contextmanager
def writing(out_dir: str | os.PathLike):
    """Create the folder `out_dir` (and its parents) for the writes in the block; a file that cannot be
    written is an InputError naming it."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        raise InputError(f"cannot write {e.filename or out_dir}: {e.strerror or e}") from e


PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
PLY_HEADER = ("ply\nformat binary_little_endian 1.0\nelement vertex {}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Write a coloured point cloud, (N, 3) float32 positions and (N, 3) uint8 colours, as a binary
    little-endian PLY file (vertex properties x y z red green blue, `PLY_VERTEX`)."""
    vertices = np.empty(len(xyz), PLY_VERTEX)
    for name, column in zip(PLY_VERTEX.names, (*np.asarray(xyz).T, *np.asarray(rgb).T)):
        vertices[name] = column
    with open(path, "wb") as f:
        f.write(PLY_HEADER.format(len(vertices)).encode("ascii"))
        f.write(vertices.tobytes())
