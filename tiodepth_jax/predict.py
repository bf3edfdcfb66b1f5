"""Depth maps for image files, stereo pairs and videos with a converted model or a training run, jitted, batched,
on any JAX backend.

Usage:
  python -m tiodepth_jax.predict --checkpoint DIR --input PATH [PATH ...] --out DIR
      [--mode Refine|Mono] [--size H W | --size auto | --input-size S] [--batch-size 4]
      [--dtype float32|bfloat16] [--no-png | --range MIN MAX --colorbar]
      [--pointcloud (--calibration FILE | --fx FX --fy FY --cx CX --cy CY)]
  python -m tiodepth_jax.predict --checkpoint DIR --left L --right R --out DIR [--mode Stereo] [...]
  python -m tiodepth_jax.predict --checkpoint DIR (--input VIDEO [VIDEO ...] | --left L.mp4 --right R.mp4 |
      --sbs VIDEO) --out DIR [--npz] [--range MIN MAX] [--colorbar] [...]
  python -m tiodepth_jax.predict --demo --out DIR [--input-size 518] [--batch-size 4] [--dtype ...]

  --checkpoint   a model directory written by `tiodepth_jax.checkpoint.save_model` (by the converters or
                 `tiodepth_jax.export_model`), or a training run (its workdir, checkpoint directory or a
                 step directory; --which latest (default), best or a step number)
  --input        image files and/or folders (a folder's .png .jpg .jpeg .bmp .tif .tiff .webp files,
                 sorted, not recursive), or video files (.mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts; not
                 together with images; see Videos below)
  --left/--right one stereo pair (two files) or two folders whose images are paired by file name (a
                 name found on one side only is an error); both images of a pair must have the same size.
                 --left is the left camera (TiO-Depth's color_s, direct +1), --right the right one.
                 Pairs need a TiO-Depth checkpoint and imply --mode Stereo. Or two video files of the
                 same frame count and size
  --sbs VIDEO    a side-by-side stereo video: each frame's left half is the left view, its right half the
                 right one (the width must be even); like --left/--right otherwise
  --mode         TiO-Depth path: Refine (default for --input; the paper's monocular "TiO-Depth"), Mono
                 (the plain monocular path) or Stereo (pairs; "TiO-Depth (Bino.)")
  --out          output folder (created if missing; an existing file is refused before the model loads):
                 <stem>.npy (float32 (H, W) depth at the image's own resolution; a pair is named after its
                 left image), <stem>.png (Spectral_r colour map, per-image min/max normalised) and, for
                 stereo pairs, <stem>_disp.npy (float32 (H, W) disparity in pixels of the input image, see
                 TiO-Depth below); inputs that would write the same file (names compared
                 case-insensitively), or an output that would overwrite an input, are refused before
                 anything runs
  --size H W     resize every image to H x W (multiples of 14), whatever its aspect ratio
  --size auto    resize every image to the multiples of 14 nearest its own sides (see below)
  --input-size S keep-aspect-ratio resize with both sides >= S (Depth-Anything-V2's policy, below)
                 The default is the model's own: --input-size 518 for Depth-Anything-V2; for TiO-Depth
                 the size it was trained at (below), else --size 378 1260
  --batch-size   images (pairs) per forward pass
  --dtype        compute dtype; parameters stay float32 ("bfloat16" halves activation memory); default: the
                 dtype a training run used (recorded by an export too), float32 for a converted model
  --no-png       write no .png colour maps (images)
  --range MIN MAX  a fixed colour scale for every image (video) instead of each one's min/max (a video's own
                 percentiles, see Videos below): depth in metres
                 for TiO-Depth (MIN is red, MAX blue; depths outside get the end colours), the output's own
                 values (relative inverse depth) for Depth-Anything-V2; 0 < MIN < MAX
  --colorbar     add a colour bar to the right of each PNG (video frame), labelled with its units ("depth (m)", or
                 "relative inverse depth") at 5 equal colour steps; the PNG becomes wider (and at least
                 about 6 text lines high)
  --pointcloud   also write <stem>.ply: binary little-endian PLY, one vertex (float x y z in metres, uchar
                 red green blue from the image) per pixel of finite depth > 0, in the (left) camera frame
                 at the input resolution: X = (u - cx) * Z / fx, Y = (v - cy) * Z / fy, Z = depth, with u, v
                 the column and row of the pixel (pixel centres at integer coordinates, as OpenCV's and
                 calibration tools' cx, cy); x right, y down, z forward. Metric (TiO-Depth) models only.
  --calibration FILE  the rig's stereo-folder calibration.yaml (tiodepth_jax/data/stereo_folder.py; fx, fy,
                 cx, cy in pixels at the size of the images given): the intrinsics of --pointcloud, and for
                 pairs its doffs (the right camera's cx minus the left's): each pair is aligned as the build
                 aligns it (both views cropped, the right one shifted by doffs) before the network sees it;
                 the depth is written at the left image's resolution, NaN in the columns the alignment
                 cropped, and <stem>_disp.npy is x_left - x_right of the input images (d2d / depth * scale -
                 doffs)
  --fx --fy --cx --cy  the same intrinsics given directly (all four)
  --npz          videos: also write <stem>.npz, the depth of every frame (see Videos below)
  --demo         no checkpoint, no input: a ViT-S Depth-Anything-V2 with RANDOM weights (nnx.Rngs(0))
                 runs on two generated 240x320 scenes (written to <out>/demo_inputs/), exercising the
                 whole pipeline without downloads; its depth maps are meaningless

Model kinds are dispatched on the checkpoint's `model.json` "kind" (`PREDICTORS`):
"depth_anything_v2" (relative inverse depth, larger = nearer) and "tiodepth" (metric depth in metres).

Network input sizes (every policy gives multiples of the patch size 14):
  * --input-size S, lower bound: scale = max(S / H, S / W), and each side becomes
    round(side * scale / 14) * 14 (numpy's round-half-even), or ceil(side * scale / 14) * 14 where that
    falls below S; both sides are >= S (Depth-Anything-V2's `infer_image`, resize_method "lower_bound").
  * --size H W, fixed: every image becomes H x W. TiO-Depth's default is the size the model was trained
    at: for a training run its data.image_size, the size its training images were resized to before the
    crop (model.image_size, the crop, is not it: the disparity bins are pixels at the full image's scale);
    a model directory exported from a run (`tiodepth_jax.export_model`) records that size. A model
    converted from PyTorch (`convert.tiodepth`) records none and gets 378 1260, the DINOv2 fork's training
    full size and pred_size (spec §9), with about KITTI's aspect ratio (1260 / 378 = 3.33, 1242 / 375 =
    3.31).
  * --size auto: each side is rounded on its own to the nearest multiple of 14 (halves round up, at
    least 14), so the network sees the image at its own resolution and aspect ratio up to 7 pixels per
    side: 375 x 1242 -> 378 x 1246, 30 x 60 -> 28 x 56, 21 x 35 -> 28 x 42.

Depth-Anything-V2 preprocessing (`infer_image`):
  1. Decode to RGB float in [0, 1] (EXIF orientation applied, as cv2.imread does).
  2. Network size from the policy above (default --input-size 518).
  3. Bicubic resampling of the float image with PIL (BICUBIC, per channel in float32 mode "F", so no
     8-bit rounding or clipping). Upstream uses cv2.resize INTER_CUBIC, whose kernel is Keys a = -0.75
     without antialiasing, while PIL's is a = -0.5 and widens its support when downscaling; inputs are
     therefore close to, not bit-identical with, upstream's (equal policy and sizes).
  4. ImageNet normalisation: (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225).
  5. The model gives (B, h, w) depth at the network resolution; each map is resized back to its
     image's (H, W) with bilinear interpolation, align_corners=True (upstream's F.interpolate call).
  The PNG colours the depth itself (it is already inverse depth), as run.py does.

TiO-Depth (spec §2.5, §8, §9):
  1. Decode as above; both images of a pair must have the same (H, W).
  2. Network size from the policy above (default --size 378 1260).
  3. PIL LANCZOS resize of the 8-bit RGB image, then / 255 and no normalisation: the test transform of
     the original's evaluation (Resize(full_size, LANCZOS), ToTensor), bit-identical for 8-bit files
     (16-bit files are rounded to 8 bits first). The model normalises internally ((x - 0.45) / 0.225).
  4. `model.inference(..., modes=(mode,))["depth"]`: depth = d2d / disparity, in metres, at the network
     size; Stereo runs color_s = left, color_o = right, direct = +1.
  5. Each map is resized back to its image's (H, W) with bilinear interpolation, align_corners=False
     (`interpolate_bilinear`, the resize the evaluation applies before its metrics, spec §8.1); depth
     values are not rescaled (depth, unlike disparity, does not change with the image size). The
     original predict.py does NOT resize back: it saves the depth at pred_size.
  The PNG colours inverse depth 1 / depth (proportional to disparity; near = red, far = blue), per-image
  min/max normalised like Depth-Anything-V2's, or between 1 / MAX and 1 / MIN with --range MIN MAX.
  Stereo also writes the disparity in pixels of the input image, derived from the written depth so that
  the two files agree exactly: disparity = d2d / depth * W / w, with W the image's width and w the network
  input's (d2d / depth is the disparity at the network input; resizing the image by W / w scales it by
  the same factor). Where the bilinear resize back blends depths across an edge this differs from resizing
  the network's disparity map itself (which evaluate's EPE does): depth and disparity stay consistent
  rather than each being interpolated on its own.
  Geometry: d2d (model config, 400.9 = fx * baseline of KITTI at ~1280 px width) and the disparity bins
  are fixed, and the stereo matching (MFM) rescales its bin shifts by training width / network input
  width, so a disparity is measured in pixels of the network input and d2d / disparity is metric only
  when the network input has fx * baseline ~= d2d: images of the training camera resized to the width
  the model was trained at (the fork trains on 840-wide crops of 1260-wide KITTI images), as the default
  size and --size auto on full KITTI frames give. Otherwise scale the output by (fx * baseline) / d2d,
  with fx in pixels at the network input width; the monocular paths learned their scale from the
  training images' appearance at that resolution and carry the same caveat. A model trained on your own
  rig (a stereo-folder dataset, with d2d set to its fx * baseline at data.image_size) is metric at its
  default size.

Videos (PyAV, the optional `video` extra): each clip's frames are decoded by FFmpeg to 8-bit RGB (audio
ignored) and run exactly as images of that size would be (`read_image`'s conversion to float, the same
preprocessing, batches of --batch-size with one compile for the clip's size, decoding on the prefetch thread
below), so depth[k] of <stem>.npz equals the <stem>.npy that predict writes for frame k saved as a PNG.
Outputs: <stem>.mp4, the depth coloured as the PNGs are (with --colorbar too), H.264 in yuv420p at the input's
frame rate (a side of odd length gets its last row or column repeated), and with --npz <stem>.npz: "depth",
(frames, H, W) float32 (metres for TiO-Depth, the relative output for Depth-Anything-V2; stereo clips store no
disparity). All frames of a clip share one colour range, so that the video does not flicker: --range MIN MAX,
else the 2nd and 98th percentiles of the depth of the whole clip (every pixel of every frame; on a regular
grid of at most 4M of them in longer clips). That range is known only when every frame is predicted, so the
depths wait in a scratch file in --out (frames x H x W x 4 bytes, deleted afterwards) and the video is
coloured and encoded in a second pass over them: the model runs once per frame. Stereo clips come from --left
and --right (same frame count and size) or --sbs; a --calibration's doffs aligns each frame pair as it aligns
image pairs. The frame count is the container's (the number of the stream's packets where it records none);
a file that is not a video, cannot be decoded or ends early fails with one line naming it.

Execution: each model is split once into graphdef / state and ONE jitted forward serves every input
shape (jax.jit caches one executable per shape). Images (pairs) are grouped by network input shape (read
from the file headers first, so unreadable files and size mismatches fail before any compute) and run in
batches of min(--batch-size, images of that shape); a short last batch is zero-padded, so each shape
compiles once. A worker thread decodes and preprocesses the next batches (up to 2 ahead) while the device
runs the current one; the outputs are the same as without it, and a file that fails to decode there is named
in the error the command ends with. Before anything is compiled, each batch's memory is estimated
(`memory_estimate`: the float32 attention logits and probabilities of one view, 2 * B * heads * T^2 * 4 bytes
for T tokens, plus 256 bytes per view and input pixel, calibrated on the compiled forwards of ViT-B TiO-Depth
and ViT-S/L Depth-Anything-V2) and compared with the memory free on the device (an accelerator's bytes_limit -
bytes_in_use, the host's available memory for a CPU); a size that does not fit (--size auto on a
6000x4000 photo needs about 1.45 TB with ViT-B) fails with one line naming it and the estimate.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import psutil  # a dependency of orbax-checkpoint
from flax import nnx
from PIL import Image
from tqdm import tqdm

from tiodepth_jax import video
from tiodepth_jax.checkpoint import load, parse_which, read_model_meta
from tiodepth_jax.colormap import add_colorbar, colorize, finite_range
from tiodepth_jax.data import stereo_folder
from tiodepth_jax.errors import InputError, InputNotFoundError, run_command
from tiodepth_jax.images import image_size, list_images, read_image, rgb_float, write_ply, write_png, writing
from tiodepth_jax.inference import Jitted
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.ops.resize import interpolate_bilinear

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEMO_IMAGE_HW = (240, 320)
DEMO_NUM_IMAGES = 2
COLORBAR_LABELS = 5          # labels of --colorbar, at equal colour steps
ACTIVATION_BYTES_PER_PIXEL = 256  # of `memory_estimate`, per view and network input pixel
PREFETCH_BATCHES = 2         # batches read and preprocessed ahead while the device runs
CLIP_RANGE_PERCENTILES = (2.0, 98.0)  # a video's colour range without --range (`clip_range`)
CLIP_RANGE_SAMPLES = 1 << 22          # ... from at most this many values of the clip's depth

log = logging.getLogger("tiodepth_jax.predict")  # not __name__, which is "__main__" under python -m


# ---------------------------------------------------------------------------------------------------
# Network input sizes and preprocessing
# ---------------------------------------------------------------------------------------------------

def _constrain_to_multiple(x: float, multiple: int, min_val: int) -> int:
    """`Resize.constrain_to_multiple_of`: round to a multiple, or ceil when rounding falls below min_val."""
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    return y


def nearest_multiple_shape(h: int, w: int, multiple: int = 14) -> tuple[int, int]:
    """`--size auto`: each side rounded to the nearest multiple (halves up), at least `multiple`."""
    return tuple(max(multiple, math.floor(side / multiple + 0.5) * multiple) for side in (h, w))


def network_input_shape(h: int, w: int, input_size, multiple: int = 14) -> tuple[int, int]:
    """(h, w) of the network input for an H x W image under a size policy (see the module docstring).

    input_size: an int S (keep the aspect ratio, both sides >= S), an (H, W) pair of multiples of
    `multiple` (fixed size) or "auto" (`nearest_multiple_shape`).
    """
    if input_size == "auto":
        return nearest_multiple_shape(h, w, multiple)
    if isinstance(input_size, (tuple, list)):
        fixed = tuple(int(s) for s in input_size)
        if len(fixed) != 2 or any(s < multiple or s % multiple for s in fixed):
            raise ValueError(f"size {input_size} must be two positive multiples of {multiple}")
        return fixed
    scale = max(input_size / h, input_size / w)
    return (_constrain_to_multiple(scale * h, multiple, input_size),
            _constrain_to_multiple(scale * w, multiple, input_size))


def preprocess(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Depth-Anything-V2: (H, W, 3) float32 RGB in [0, 1] -> (h, w, 3) float32, bicubic, ImageNet-normalised."""
    h, w = shape
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                           .resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)]
    return (np.stack(channels, axis=-1) - IMAGENET_MEAN) / IMAGENET_STD


def preprocess_lanczos(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """TiO-Depth: (H, W, 3) float32 RGB in [0, 1] -> (h, w, 3) float32 in [0, 1], PIL LANCZOS on 8-bit RGB.

    The original's test transform (Resize(full_size, LANCZOS) then ToTensor); no normalisation.
    """
    h, w = shape
    rgb8 = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")
    return np.asarray(rgb8.resize((w, h), Image.Resampling.LANCZOS), np.float32) / 255.0


@functools.partial(jax.jit, static_argnames=("size", "align_corners"))
def resize_depth(depth, size: tuple[int, int], align_corners: bool = True):
    """(h, w) -> (H, W), bilinear (align_corners=True is Depth-Anything-V2's resize back)."""
    return interpolate_bilinear(depth[None, :, :, None], size=size, align_corners=align_corners)[0, :, :, 0]


# ---------------------------------------------------------------------------------------------------
# Inputs and batching
# ---------------------------------------------------------------------------------------------------

def list_pairs(left, right) -> list[tuple[Path, Path]]:
    """Stereo pairs from two files, or from two folders matched by file name (in the left folder's order).

    Raises InputNotFoundError for a missing path and InputError for a file paired with a folder, a folder
    without images, or a name found in only one folder (naming those files).
    """
    left, right = Path(left), Path(right)
    for p in (left, right):
        if not p.exists():
            raise InputNotFoundError(f"input {p} does not exist")
    if left.is_dir() != right.is_dir():
        raise InputError(f"--left {left} and --right {right} must both be files or both be folders")
    if not left.is_dir():
        return [(left, right)]
    lefts, rights = ({f.name: f for f in list_images([d])} for d in (left, right))
    unmatched = [f for f in (*lefts.values(), *rights.values()) if f.name not in lefts or f.name not in rights]
    if unmatched:
        more = f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
        raise InputError(f"no partner of the same name in the other folder for {', '.join(map(str, unmatched[:3]))}"
                         f"{more}")
    return [(f, rights[name]) for name, f in lefts.items()]


def item_size(views) -> tuple[int, int]:
    """(H, W) shared by the images of one input (one image or a pair); raises InputError when they differ."""
    sizes = [image_size(p) for p in views]
    if len(set(sizes)) > 1:
        raise InputError("the images of a pair must have the same size: "
                         + ", ".join(f"{p} is {h}x{w}" for p, (h, w) in zip(views, sizes)))
    return sizes[0]


@dataclasses.dataclass(frozen=True)
class Batch:
    """Inputs (indices into the input list) sharing one network input shape, run as `padded_size`."""

    shape: tuple[int, int]
    indices: tuple[int, ...]
    padded_size: int


def plan_batches(sizes, input_size, batch_size: int, multiple: int = 14) -> list[Batch]:
    """Group inputs by network input shape (first-seen order) and cut each group into batches.

    `input_size` is a size policy of `network_input_shape`. Every batch of a shape has the same size,
    min(batch_size, inputs of that shape), so that each shape is compiled exactly once; the last batch
    of a group is padded.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault(network_input_shape(h, w, input_size, multiple), []).append(i)
    batches = []
    for shape, indices in groups.items():
        size = min(batch_size, len(indices))
        batches += [Batch(shape, tuple(indices[s:s + size]), size) for s in range(0, len(indices), size)]
    return batches


def output_stems(paths, out_dir, suffixes, inputs=None) -> list[str]:
    """The output stem of each path, whose files are `<stem><suffix>` for each of `suffixes`. Raises
    InputError when two paths would write the same file (names compared case-insensitively, as
    case-insensitive file systems do) or an output would overwrite one of `inputs` (default: `paths`)."""
    owner: dict[str, Path] = {}
    for p in paths:
        for suffix in suffixes:
            other = owner.setdefault(f"{p.stem}{suffix}".casefold(), p)
            if other is not p:
                raise InputError(f"inputs {other} and {p} would both write {p.stem}{suffix}; "
                                 "rename one or run them separately")
    inputs = {p.resolve() for p in (paths if inputs is None else inputs)}
    for p in paths:
        for out in (Path(out_dir) / f"{p.stem}{suffix}" for suffix in suffixes):
            if out.resolve() in inputs:
                raise InputError(f"output {out} would overwrite an input image; choose another --out")
    return [p.stem for p in paths]


def memory_estimate(batch: int, shape: tuple[int, int], views: int, num_heads: int, patch_size: int) -> int:
    """Bytes a forward pass of `batch` inputs of `views` images at network size `shape` needs, roughly.

    2 * B * heads * T^2 * 4 for the float32 attention logits and probabilities of one view (T = h/p * w/p + 1
    tokens; the views run one after the other), plus B * views * h * w * ACTIVATION_BYTES_PER_PIXEL for the
    other activations. Calibrated on XLA's memory analysis of the compiled forwards (temporary buffers, CPU,
    float32, batch 1): it is 1% below to 11% above it for TiO-Depth ViT-B (Mono, Refine, Stereo at 252x840,
    378x1260, 560x1680) and Depth-Anything-V2 ViT-L (518x686, 1036x1358), 36% above for ViT-S at 518x686
    (a smaller head); bfloat16 needs less.
    """
    h, w = shape
    tokens = (h // patch_size) * (w // patch_size) + 1
    return batch * (2 * num_heads * tokens**2 * 4 + views * h * w * ACTIVATION_BYTES_PER_PIXEL)


def available_memory(device) -> int:
    """Bytes free for a computation on `device`: bytes_limit - bytes_in_use of an accelerator, the available
    physical memory (psutil) of the host for a CPU device."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return psutil.virtual_memory().available


def check_memory(predictor: DepthPredictor, batches, items) -> None:
    """Raises InputError, before anything is compiled, for a batch whose `memory_estimate` exceeds the
    `available_memory` of the device, naming its first input, the network size and the estimate."""
    device = jax.devices()[0]
    available = available_memory(device)
    for batch in batches:
        need = memory_estimate(batch.padded_size, batch.shape, predictor.views, predictor.num_heads,
                               predictor.patch_size)
        if need > available:
            h, w = batch.shape
            what = f"a batch of {batch.padded_size}" if batch.padded_size > 1 else "one input"
            raise InputError(f"network input size {h}x{w} ({what}, e.g. {items[batch.indices[0]][0]}) needs about "
                             f"{need / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB free on "
                             f"{device.platform}; give a smaller size with --size H W or --input-size S"
                             + (" or a smaller --batch-size" if batch.padded_size > 1 else ""))


@dataclasses.dataclass(frozen=True)
class InputGeometry:
    """How a network disparity maps to the input pair's: disparity = d2d / depth * scale - doffs, with scale =
    the width of the (aligned) images the network saw / the network input width, and doffs the rig's."""

    scale: float
    doffs: float = 0.0


def input_disparity(depth: np.ndarray, d2d: float, geometry: InputGeometry) -> np.ndarray:
    """Disparity x_left - x_right in pixels of the input images from depth at their resolution."""
    return np.float32(d2d * geometry.scale) / depth - np.float32(geometry.doffs)


def align_views(views: list[np.ndarray], doffs: float) -> tuple[list[np.ndarray], stereo_folder.Alignment]:
    """A pair (float RGB in [0, 1]) aligned as the stereo-folder build aligns it (8-bit, `align_pair`)."""
    left, right = (Image.fromarray(np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)) for v in views)
    left, right, alignment = stereo_folder.align_pair(left, right, doffs)
    return [np.asarray(v, np.float32) / np.float32(255) for v in (left, right)], alignment


def unalign(depth: np.ndarray, alignment: stereo_folder.Alignment, width: int) -> np.ndarray:
    """The (H, alignment.width) depth of an aligned left view placed in the (H, width) left image; NaN in the
    columns the alignment cropped."""
    full = np.full((depth.shape[0], width), np.nan, np.float32)
    full[:, alignment.left_start:alignment.left_start + alignment.width] = depth
    return full


def point_cloud(depth: np.ndarray, image: np.ndarray, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Back-projection of an (H, W) depth map with the pinhole `intrinsics` (fx, fy, cx, cy) in pixels at
    its resolution: X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = depth at column u, row v (pixel centres at
    integer coordinates). Returns (N, 3) float32 xyz and the (N, 3) uint8 colours of `image` (H, W, 3) in
    [0, 1] at the N pixels of finite, positive depth."""
    fx, fy, cx, cy = intrinsics
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    xyz = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1).astype(np.float32)
    return xyz, np.round(np.clip(image[v, u], 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What is written for each input besides `<stem>.npy` (see the module docstring)."""

    png: bool = True                                  # <stem>.png
    colorbar: bool = False                            # ... with a colour bar
    value_range: tuple[float, float] | None = None    # ... on this fixed scale (model output units)
    intrinsics: tuple[float, float, float, float] | None = None  # <stem>.ply with these fx, fy, cx, cy


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

class DepthPredictor(Jitted):
    """A model's jitted depth forward (`inference.Jitted`); this class: Depth-Anything-V2.

    `predictor(*views)`: `views` (B, h, w, 3) preprocessed images (one per view), h and w multiples of
    the patch size -> (B, h, w) depth. `num_traces` counts the shapes compiled so far. Subclasses set
    the model-kind specifics: modes, views per input, size policy, preprocessing, resize back, outputs.
    """

    kind = "depth_anything_v2"
    modes = (None,)          # accepted `mode`s, the first the default
    default_size = 518       # the size policy used without --size / --input-size
    align_corners = True     # of the resize back to the image size
    metric = False           # whether the output is depth in metres (else relative inverse depth)
    colour_title = "relative inverse depth"  # the units of the colour bar
    preprocess = staticmethod(preprocess)

    def __init__(self, model, mode=None):
        self.mode = self.check_mode(mode)
        dinov2 = self.dinov2_config(model)
        self.patch_size, self.num_heads = dinov2.patch_size, dinov2.num_heads
        super().__init__(model, self.forward)

    @classmethod
    def check_mode(cls, mode):
        """`mode`, or the default for None; raises InputError for a mode this model kind does not have."""
        if mode is None:
            return cls.modes[0]
        if mode not in cls.modes:
            if cls.modes == (None,):
                raise InputError(f"a {cls.kind!r} model has no mode {mode}: --mode and stereo pairs "
                                 "(--left/--right) need a TiO-Depth checkpoint")
            raise InputError(f"a {cls.kind!r} model has modes {', '.join(cls.modes)}, not {mode}")
        return mode

    @property
    def views(self) -> int:
        """Images per input: 1, or 2 for a stereo pair."""
        return 1

    @staticmethod
    def dinov2_config(model):
        return model.cfg.dinov2

    def forward(self, model, x):
        return model(x)

    @staticmethod
    def colour_values(depth: np.ndarray) -> np.ndarray:
        """The values the PNG colours, larger = nearer = red: the output itself (already inverse depth)."""
        return depth

    @staticmethod
    def colour_label(value) -> str:
        """The colour bar's label of a colour value."""
        return f"{value:.3g}"

    def colour_image(self, depth: np.ndarray, outputs: Outputs) -> np.ndarray:
        """The PNG of a depth map: `colour_values` on the --range scale (its ends mapped by `colour_values`
        too) or on their own min/max, with a colour bar if asked."""
        values = self.colour_values(depth)
        vmin, vmax = (sorted(self.colour_values(np.asarray(outputs.value_range, np.float32)))
                      if outputs.value_range else finite_range(values))
        rgb = colorize(values, vmin=vmin, vmax=vmax)
        if not outputs.colorbar:
            return rgb
        labels = [self.colour_label(vmin + t * (vmax - vmin)) for t in np.linspace(1.0, 0.0, COLORBAR_LABELS)]
        return add_colorbar(rgb, labels, self.colour_title)

    def output_suffixes(self, outputs: Outputs) -> tuple[str, ...]:
        """The files `save` writes for an input, as endings of its stem."""
        return (".npy",) + ((".png",) if outputs.png else ()) + ((".ply",) if outputs.intrinsics else ())

    def save(self, out_dir, stem: str, depth: np.ndarray, image: np.ndarray, geometry: InputGeometry,
             outputs: Outputs) -> None:
        """Write the `output_suffixes` files of one input: its (H, W) depth, (H, W, 3) image (the left one of
        a pair) and how the network's disparities map to the input's."""
        out_dir = Path(out_dir)
        with writing(out_dir):
            np.save(out_dir / f"{stem}.npy", depth)
            if outputs.png:
                write_png(out_dir / f"{stem}.png", self.colour_image(depth, outputs))
            if outputs.intrinsics:
                write_ply(out_dir / f"{stem}.ply", *point_cloud(depth, image, outputs.intrinsics))


class TiODepthPredictor(DepthPredictor):
    """TiO-Depth: metric depth (metres) of the Refine or Mono path on single images, or Stereo on pairs."""

    kind = "tiodepth"
    modes = ("Refine", "Mono", "Stereo")
    default_size = (378, 1260)  # the fork's; a run's (or its export's) training image size replaces it
    align_corners = False
    metric = True
    colour_title = "depth (m)"
    preprocess = staticmethod(preprocess_lanczos)

    def __init__(self, model, mode=None):
        super().__init__(model, mode)
        self.d2d = model.cfg.d2d

    @property
    def views(self) -> int:
        return 2 if self.mode == "Stereo" else 1

    @staticmethod
    def dinov2_config(model):
        return model.encoder.cfg.dinov2

    def forward(self, model, color_s, color_o=None):
        inputs = {"color_s": color_s} if color_o is None else {"color_s": color_s, "color_o": color_o}
        return model.inference(inputs, modes=(self.mode,))["depth"][..., 0].astype(jnp.float32)

    @staticmethod
    def colour_values(depth: np.ndarray) -> np.ndarray:
        """Inverse depth: near red, far blue, like the Depth-Anything-V2 maps."""
        return 1.0 / depth

    @staticmethod
    def colour_label(value) -> str:
        return f"{1.0 / value:.3g}"

    def output_suffixes(self, outputs: Outputs) -> tuple[str, ...]:
        return super().output_suffixes(outputs) + (("_disp.npy",) if self.views == 2 else ())

    def save(self, out_dir, stem: str, depth: np.ndarray, image: np.ndarray, geometry: InputGeometry,
             outputs: Outputs) -> None:
        super().save(out_dir, stem, depth, image, geometry, outputs)
        if self.views == 2:
            with writing(out_dir):
                np.save(Path(out_dir) / f"{stem}_disp.npy", input_disparity(depth, self.d2d, geometry))


PREDICTORS = {cls.kind: cls for cls in (DepthPredictor, TiODepthPredictor)}


def predictor_class(checkpoint) -> type[DepthPredictor]:
    """The predictor class of the model at `checkpoint` (a training run holds TiO-Depth), from its model.json
    only; raises InputError for a kind predict does not serve."""
    path = Path(checkpoint)
    kind = read_model_meta(path)["kind"] if (path / "model.json").is_file() else "tiodepth"
    if kind not in PREDICTORS:
        raise InputError(f"{checkpoint} holds a {kind!r} model; predict supports: {', '.join(PREDICTORS)}")
    return PREDICTORS[kind]


def load_predictor(checkpoint, dtype=None, mode=None, which="latest") -> DepthPredictor:
    """The predictor of the model at `checkpoint`: a model directory or a training run (its checkpoint
    `which`), in the compute dtype it was trained at unless `dtype` is given. A TiO-Depth predictor
    defaults to the size the model's training images had (`checkpoint.Loaded.image_size`) where it is
    known. Raises InputError for a kind predict does not serve and for a `mode` that kind does not have."""
    cls = predictor_class(checkpoint)
    cls.check_mode(mode)  # before the (slow) parameter loading
    loaded = load(checkpoint, kind=cls.kind, which=which, dtype=dtype)
    predictor = cls(loaded.model, mode=mode)
    if loaded.image_size is not None:
        predictor.default_size = loaded.image_size
    return predictor


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------

def preprocess_batch(predictor: DepthPredictor, inputs: list[list[np.ndarray]], batch: Batch) -> np.ndarray:
    """The network input of a batch: [[(H, W, 3)] * views] -> (views, batch.padded_size, h, w, 3), zero-padded."""
    xs = np.zeros((predictor.views, batch.padded_size, *batch.shape, 3), np.float32)
    for k, views in enumerate(inputs):
        for v, image in enumerate(views):
            xs[v, k] = predictor.preprocess(image, batch.shape)
    return xs


def run_batch(predictor: DepthPredictor, xs: np.ndarray, sizes) -> list[np.ndarray]:
    """Predict a `preprocess_batch` and resize each depth map back to its image's (H, W) in `sizes`."""
    depth = predictor(*xs)  # (B, h, w)
    return [np.asarray(resize_depth(depth[k], tuple(hw), predictor.align_corners)) for k, hw in enumerate(sizes)]


def prefetched(fn, items, depth: int):
    """`fn(item)` for each of `items`, in order. With depth > 0 the calls run on one worker thread, up to
    `depth` items ahead of the consumer, so that reading and preprocessing the next batches overlaps the device
    running the current one. An exception of `fn` is raised in the consumer's thread when its item is reached;
    closing the generator cancels the calls not started and waits for the one running."""
    if depth == 0:
        yield from map(fn, items)
        return
    items = iter(items)
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict-prefetch")
    try:
        pending = collections.deque(pool.submit(fn, item) for item in itertools.islice(items, depth))
        while pending:
            future = pending.popleft()
            pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def predict_batches(predictor: DepthPredictor, batches, read, doffs: float = 0.0, prefetch: int = PREFETCH_BATCHES):
    """Yield (batch, images, depths) for each of `batches`: `read(i)` gives input i's views ([(H, W, 3)] float
    RGB in [0, 1]), `depths` the (H, W) depth map of each. With `doffs` a pair is aligned as the stereo-folder
    build aligns it before the network sees it and its depth is placed back in the left image (NaN in the cropped
    columns). Reading, aligning and preprocessing run `prefetch` batches ahead on a thread (`prefetched`);
    an error there (a file that cannot be decoded: `read` names it) is raised here. Use it in `closing()`."""
    aligned = doffs != 0 and predictor.views == 2

    def prepare(batch):
        images = [read(i) for i in batch.indices]
        inputs = [align_views(views, doffs)[0] if aligned else views for views in images]
        return images, inputs, preprocess_batch(predictor, inputs, batch)

    with contextlib.closing(prefetched(prepare, batches, prefetch)) as prepared:
        for batch, (images, inputs, xs) in zip(batches, prepared):
            depths = run_batch(predictor, xs, [views[0].shape[:2] for views in inputs])
            if aligned:
                depths = [unalign(depth, stereo_folder.alignment(doffs, views[0].shape[1]), views[0].shape[1])
                          for depth, views in zip(depths, images)]
            yield batch, images, depths


def predict_files(predictor: DepthPredictor, paths, out_dir, *, input_size=None, batch_size: int = 4,
                  outputs: Outputs = Outputs(), doffs: float = 0.0, prefetch: int = PREFETCH_BATCHES) -> None:
    """Write `<out_dir>/<stem>.npy` and the other `outputs` for every input (see the module docstring).

    paths: image paths, or (left, right) pairs for a two-view predictor. input_size: a size policy of
    `network_input_shape`; None for the predictor's `default_size`. doffs: the rig's principal-point offset
    (pairs): each pair is aligned as the stereo-folder build aligns it before the network sees it. Inputs,
    output names and the memory each network input size needs are checked before anything runs. prefetch:
    batches decoded and preprocessed ahead on a thread while the device runs (0: none); outputs do not depend
    on it.
    """
    items = [tuple(map(Path, p)) if isinstance(p, (tuple, list)) else (Path(p),) for p in paths]
    if any(len(views) != predictor.views for views in items):
        raise InputError(f"a {predictor.kind!r} model in mode {predictor.mode} takes "
                         + ("stereo pairs (--left, --right)" if predictor.views == 2 else "single images"))
    stems = output_stems([views[0] for views in items], out_dir, predictor.output_suffixes(outputs),
                         [p for views in items for p in views])
    aligned = doffs != 0 and predictor.views == 2
    sizes = [item_size(views) for views in items]
    network_sizes = [(h, stereo_folder.alignment(doffs, w).width) if aligned else (h, w) for h, w in sizes]
    batches = plan_batches(network_sizes, predictor.default_size if input_size is None else input_size,
                           batch_size, predictor.patch_size)
    check_memory(predictor, batches, items)
    results = predict_batches(predictor, batches, lambda i: [read_image(p) for p in items[i]], doffs, prefetch)
    with contextlib.closing(results), tqdm(total=len(items), unit="pair" if predictor.views == 2 else "img",
                                           desc="depth") as bar:
        for batch, images, depths in results:
            for i, views, depth in zip(batch.indices, images, depths):
                geometry = InputGeometry(network_sizes[i][1] / batch.shape[1], doffs if aligned else 0.0)
                predictor.save(out_dir, stems[i], depth, views[0], geometry, outputs)
            bar.update(len(batch.indices))


# ---------------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Clip:
    """A video input: one file of single frames, a left and a right file of the same frame count and size, or
    one side-by-side file (`sbs`: each frame's left half is the left view, its right half the right one), with
    its frame count, frame rate and the size of one view (`open_clip`). Its outputs are named after its first
    file."""

    paths: tuple[Path, ...]
    info: video.VideoInfo
    sbs: bool = False

    @property
    def views(self) -> int:
        return 2 if self.sbs else len(self.paths)

    def frames(self):
        """Yield the views of each frame: [(H, W, 3)] float32 RGB in [0, 1], the conversion `read_image` applies
        to 8-bit images."""
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(contextlib.closing(video.read_frames(p, self.info.num_frames)))
                       for p in self.paths]
            for frames in zip(*readers):
                yield [rgb_float(f) for f in (np.split(frames[0], 2, axis=1) if self.sbs else frames)]


def open_clip(paths, sbs: bool = False) -> Clip:
    """The clip of one video file, a (left, right) pair of them or a side-by-side one, from the file headers.
    Raises InputNotFoundError for a missing file and InputError for one that is not a readable video, a pair
    whose frame counts or sizes differ (naming both files) and a side-by-side video of odd width."""
    paths = tuple(map(Path, paths))
    for p in paths:
        if not p.is_file():
            raise InputNotFoundError(f"input {p} does not exist")
    infos = [video.probe(p) for p in paths]
    if len({(i.num_frames, i.height, i.width) for i in infos}) > 1:
        raise InputError("the videos of a stereo pair must have the same frame count and size: " + ", ".join(
            f"{i.path} has {i.num_frames} frames of {i.height}x{i.width}" for i in infos))
    info = infos[0]
    if sbs and info.width % 2:
        raise InputError(f"side-by-side video {info.path} has an odd width ({info.width}); it must split into "
                         "two views of equal width")
    return Clip(paths, dataclasses.replace(info, width=info.width // 2) if sbs else info, sbs)


def list_clips(paths=(), left=None, right=None, sbs=None) -> list[Clip]:
    """The clips of --input video files, of --left and --right video files, or of an --sbs video (`open_clip`)."""
    if sbs:
        return [open_clip([sbs], sbs=True)]
    return [open_clip([left, right])] if left else [open_clip([p]) for p in paths]


def clip_range(depths) -> tuple[float, float]:
    """The colour range of a clip without --range: the CLIP_RANGE_PERCENTILES of the finite outputs of all its
    frames, (F, H, W), taken on every s-th row and column with the smallest s that keeps at most
    CLIP_RANGE_SAMPLES values (every pixel of a clip up to that size). One range for the whole clip, so that a
    colour is the same depth in every frame (per-frame min/max would flicker); percentiles, so that a few
    extreme pixels do not wash out the rest; a fixed grid, so that a clip gets the same range every time."""
    f, h, w = depths.shape
    stride = max(1, math.ceil(math.sqrt(f * h * w / CLIP_RANGE_SAMPLES)))
    values = np.asarray(depths[:, ::stride, ::stride]).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 0.0
    low, high = np.percentile(values, CLIP_RANGE_PERCENTILES)
    return float(low), float(high)


def predict_videos(predictor: DepthPredictor, clips, out_dir, *, input_size=None, batch_size: int = 4,
                   outputs: Outputs = Outputs(), npz: bool = False, doffs: float = 0.0,
                   prefetch: int = PREFETCH_BATCHES) -> int:
    """Write `<out_dir>/<stem>.mp4`, each clip's colour depth video, and with `npz` `<stem>.npz` ("depth":
    (frames, H, W) float32, `predict_files`' depth maps of every frame); returns the number of frames.

    Frames go through exactly the path of images (`predict_batches`: preprocessing, batches of one compiled
    shape, resize back, `doffs` alignment), decoded on the prefetch thread. The video is coloured like the PNGs
    (`colour_image` with outputs.colorbar) on one range for the whole clip: outputs.value_range, else
    `clip_range`, found after all frames are predicted (their depths wait in a scratch file in `out_dir`),
    so the model runs once per frame. It has the input's frame rate; odd sides are padded (`video.even`).
    Output names and memory are checked for every clip before anything runs (files and sizes by `open_clip`).
    """
    if any(clip.views != predictor.views for clip in clips):
        raise InputError(f"a {predictor.kind!r} model in mode {predictor.mode} takes "
                         + ("stereo videos (--left, --right or --sbs)" if predictor.views == 2 else "single videos"))
    suffixes = (".mp4", ".npz") if npz else (".mp4",)
    stems = output_stems([clip.paths[0] for clip in clips], out_dir, suffixes, [p for c in clips for p in c.paths])
    aligned = doffs != 0 and predictor.views == 2
    size = predictor.default_size if input_size is None else input_size
    plans = []
    for clip in clips:
        h, w, n = clip.info.height, clip.info.width, clip.info.num_frames
        network_size = (h, stereo_folder.alignment(doffs, w).width if aligned else w)
        plans.append(plan_batches([network_size] * n, size, batch_size, predictor.patch_size))
        check_memory(predictor, plans[-1], [clip.paths] * n)
    for clip, stem, batches in zip(clips, stems, plans):
        info = clip.info
        size = f"{info.height}x{info.width}" if clip.views == 1 else f"two {info.height}x{info.width} views"
        log.info(f"{clip.paths[0]}: {info.num_frames} frames of {size} at {float(info.rate):.4g} frames/s")
        value_range = predict_clip(predictor, clip, batches, Path(out_dir), stem, outputs, npz, doffs, prefetch)
        origin = "--range" if outputs.value_range else "percentiles %g and %g of the clip" % CLIP_RANGE_PERCENTILES
        log.info(f"{stem}.mp4: colours from {value_range[0]:.4g} to {value_range[1]:.4g} ({origin})")
    return sum(clip.info.num_frames for clip in clips)


def predict_clip(predictor: DepthPredictor, clip: Clip, batches, out_dir: Path, stem: str, outputs: Outputs,
                 npz: bool, doffs: float, prefetch: int) -> tuple[float, float]:
    """The outputs of one clip of `predict_videos`; returns its colour range."""
    info, frames = clip.info, clip.frames()
    with writing(out_dir), tempfile.TemporaryFile(dir=out_dir) as scratch, contextlib.closing(frames):
        depths = np.memmap(scratch, np.float32, "w+", shape=(info.num_frames, info.height, info.width))
        results = predict_batches(predictor, batches, lambda i: next(frames), doffs, prefetch)
        with contextlib.closing(results), tqdm(total=info.num_frames, unit="frame", desc="depth") as bar:
            for batch, _, batch_depths in results:
                depths[list(batch.indices)] = np.stack(batch_depths)
                bar.update(len(batch.indices))
        value_range = outputs.value_range or clip_range(depths)
        colours = dataclasses.replace(outputs, value_range=value_range)
        with video.VideoWriter(out_dir / f"{stem}.mp4", info.rate) as writer:
            for depth in tqdm(depths, unit="frame", desc="video"):
                writer.write(predictor.colour_image(depth, colours))
        if npz:
            np.savez(out_dir / f"{stem}.npz", depth=depths)
    return value_range


# ---------------------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------------------

def synthetic_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth test scene, (h, w, 3) float32 in [0, 1]: sky, a checkered ground plane, a shaded ball."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / h, x / w
    horizon = 0.4 + 0.1 * rng.random()
    sky = np.stack([0.5 + 0.4 * y, 0.7 + 0.25 * y, np.full_like(y, 0.95)], axis=-1)
    z = 1.0 / np.maximum(y - horizon, 1e-3)  # ground distance grows towards the horizon
    checker = (np.floor((x - 0.5) * z * 2) + np.floor(z * 2)) % 2
    shade = np.clip(1.5 / z, 0.3, 1.0)[..., None]
    ground = shade * np.stack([0.35 + 0.25 * checker, 0.45 + 0.2 * checker, 0.3 + 0.1 * checker], axis=-1)
    image = np.where((y > horizon)[..., None], ground, sky)
    cx, cy, r = 0.3 + 0.4 * rng.random(), horizon + 0.25, 0.15
    dx, dy = (x - cx) * w / h, y - cy
    inside = dx**2 + dy**2 < r**2
    nz = np.sqrt(np.clip(r**2 - dx**2 - dy**2, 0, None)) / r
    light = np.clip(0.2 + 0.8 * (nz * 0.7 - dx / r * 0.5 - dy / r * 0.5), 0, 1)
    ball = light[..., None] * np.array([0.9, 0.3, 0.2], np.float32)
    return np.where(inside[..., None], ball, image).astype(np.float32)


def write_demo_inputs(folder: Path) -> list[Path]:
    """Write DEMO_NUM_IMAGES synthetic scenes of DEMO_IMAGE_HW as PNGs into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(DEMO_NUM_IMAGES):
        paths.append(folder / f"demo_{k}.png")
        write_png(paths[-1], np.round(synthetic_scene(*DEMO_IMAGE_HW, seed=k) * 255).astype(np.uint8))
    return paths


def demo_predictor(dtype=jnp.float32) -> DepthPredictor:
    """A ViT-S Depth-Anything-V2 with deterministic random weights."""
    return DepthPredictor(DepthAnythingV2(DepthAnythingV2Config.preset("vits"), dtype=dtype, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def _size_policy(parser, values):
    """--size H W | auto -> (H, W) or "auto"."""
    if values == ["auto"]:
        return "auto"
    try:
        size = tuple(int(v) for v in values)
    except ValueError:
        size = ()
    if len(size) != 2 or any(v < 14 or v % 14 for v in size):
        parser.error(f"--size takes 'auto' or two positive multiples of 14 (H W), got {' '.join(values)}")
    return size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="converted model directory, or a training run (its workdir or checkpoint directory)")
    parser.add_argument("--input", nargs="+", metavar="PATH", help="image files and/or folders, or video files")
    parser.add_argument("--left", type=Path, metavar="PATH", help="left image or video, or folder of left images")
    parser.add_argument("--right", type=Path, metavar="PATH",
                        help="right image or video, or folder of right images")
    parser.add_argument("--sbs", type=Path, metavar="VIDEO",
                        help="a side-by-side stereo video: the left view in the left half of each frame")
    parser.add_argument("--mode", choices=TiODepthPredictor.modes,
                        help="TiO-Depth path (default Refine; Stereo for pairs)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--size", nargs="+", metavar="SIZE",
                        help="network input size: H W (multiples of 14), or auto (the multiples of 14 nearest "
                             "the image's own sides); TiO-Depth default 378 1260")
    parser.add_argument("--input-size", type=int, metavar="S",
                        help="keep-aspect-ratio network input, both sides >= S (Depth-Anything-V2 default 518)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="images (pairs) per forward pass (default 4)")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        help="compute dtype (default: the one the model was trained at; float32 for converted models)")
    parser.add_argument("--which", default="latest", type=parse_which,
                        help="checkpoint of a training run: latest (default), best, or a step number")
    parser.add_argument("--no-png", action="store_true", help="write no .png colour maps")
    parser.add_argument("--range", nargs=2, type=float, metavar=("MIN", "MAX"), dest="value_range",
                        help="fixed colour scale of the PNGs and videos: depth in metres (TiO-Depth) or the "
                             "output's own units (Depth-Anything-V2), instead of each image's min/max (a video's "
                             "percentiles)")
    parser.add_argument("--colorbar", action="store_true", help="add a colour bar with units to the PNGs (videos)")
    parser.add_argument("--npz", action="store_true",
                        help="videos: also write <stem>.npz, the depth of every frame (frames, H, W)")
    parser.add_argument("--pointcloud", action="store_true",
                        help="also write <stem>.ply, a coloured point cloud (TiO-Depth; needs the intrinsics)")
    parser.add_argument("--calibration", type=Path, metavar="FILE",
                        help="intrinsics of --pointcloud from a stereo-folder calibration.yaml")
    for name in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{name}", type=float, help=f"{name} of --pointcloud in pixels of the input images")
    parser.add_argument("--demo", action="store_true",
                        help="random-weight ViT-S on generated images; needs no checkpoint or input")
    args = parser.parse_args(argv)
    pairs = args.left is not None or args.right is not None
    if args.demo and (args.checkpoint or args.input or pairs or args.sbs or args.mode or args.size):
        parser.error("--demo takes no --checkpoint, --input, --left, --right, --sbs, --mode or --size")
    if not args.demo and not (args.checkpoint and (args.input or pairs or args.sbs)):
        parser.error("--checkpoint and --input (or --left and --right, or --sbs) are required (or use --demo)")
    if sum(map(bool, (args.input, pairs, args.sbs))) > 1:
        parser.error("give single images or videos with --input, stereo pairs with --left and --right, or a "
                     "side-by-side video with --sbs: one of them")
    if pairs and (args.left is None or args.right is None):
        parser.error("stereo pairs need both --left and --right")
    if pairs or args.sbs:
        if args.mode not in (None, "Stereo"):
            parser.error(f"stereo pairs run --mode Stereo, not {args.mode}; give single images with --input")
        args.mode = "Stereo"
    elif args.mode == "Stereo":
        parser.error("--mode Stereo takes stereo pairs: --left and --right, or --sbs")
    named = args.input or ([args.left, args.right] if pairs else [])
    videos = [video.is_video_file(p) for p in named]
    if any(videos) and not all(videos):
        parser.error("give video files (" + " ".join(video.VIDEO_EXTENSIONS) + ") or images, not both: "
                     + ("--input" if args.input else "--left and --right"))
    args.video = bool(args.sbs) or any(videos)
    if args.npz and not args.video:
        parser.error("--npz writes the depth of every frame of a video; give a video")
    if args.video and (args.no_png or args.pointcloud):
        parser.error("a video gives a colour video and depth (--npz): --no-png and --pointcloud are for images")
    if args.size is not None and args.input_size is not None:
        parser.error("give --size or --input-size, not both")
    if args.size is not None:
        args.size = _size_policy(parser, args.size)
    if (args.input_size is not None and args.input_size < 1) or args.batch_size < 1:
        parser.error("--input-size and --batch-size must be positive")
    if args.value_range and not 0 < args.value_range[0] < args.value_range[1] < math.inf:
        parser.error(f"--range takes MIN MAX with 0 < MIN < MAX, got {' '.join(map(str, args.value_range))}")
    if (args.value_range or args.colorbar) and args.no_png:
        parser.error("--range and --colorbar apply to the PNGs, which --no-png turns off")
    given = [name for name in ("fx", "fy", "cx", "cy") if getattr(args, name) is not None]
    if given and not args.pointcloud:
        parser.error("--fx --fy --cx --cy give the intrinsics of --pointcloud")
    if args.calibration and not (args.pointcloud or args.left or args.sbs):
        parser.error("--calibration aligns stereo pairs (--left, --right, --sbs) and gives --pointcloud's "
                     "intrinsics")
    if args.pointcloud and (bool(args.calibration) == bool(given) or 0 < len(given) < 4):
        parser.error("--pointcloud needs the intrinsics: --calibration FILE or all of --fx --fy --cx --cy")
    if any(getattr(args, name) is not None and getattr(args, name) <= 0 for name in ("fx", "fy")):
        parser.error("--fx and --fy must be positive")
    if args.demo and args.input_size is None:
        args.input_size = 518
    return args


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


def intrinsics(args: argparse.Namespace) -> tuple[float, float, float, float] | None:
    """(fx, fy, cx, cy) of --pointcloud, from --calibration or --fx --fy --cx --cy; None without it."""
    if args.calibration:
        calibration = stereo_folder.read_calibration(args.calibration)
        return calibration.fx, calibration.fy, calibration.cx, calibration.cy
    return (args.fx, args.fy, args.cx, args.cy) if args.pointcloud else None


def run(args: argparse.Namespace) -> None:
    """The prediction the command line asks for."""
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder (it is created if it does not exist)")
    cls = DepthPredictor if args.demo else predictor_class(args.checkpoint)
    if args.pointcloud and not cls.metric:
        raise InputError(f"--pointcloud needs metric depth (a TiO-Depth model); a {cls.kind!r} model predicts "
                         "relative inverse depth")
    outputs = Outputs(png=not args.no_png, colorbar=args.colorbar,
                      value_range=tuple(args.value_range) if args.value_range else None, intrinsics=intrinsics(args))
    dtype = DTYPES[args.dtype] if args.dtype else None
    start = time.perf_counter()
    if args.demo:
        print("DEMO: Depth-Anything-V2 ViT-S with RANDOM weights (nnx.Rngs(0)); the depth maps are "
              "meaningless, this only exercises the pipeline.")
        predictor = demo_predictor(dtype or jnp.float32)
        paths = write_demo_inputs(args.out / "demo_inputs")
    else:
        paths = (list_clips(args.input or (), args.left, args.right, args.sbs) if args.video
                 else list_pairs(args.left, args.right) if args.left else list_images(args.input))
        predictor = load_predictor(args.checkpoint, dtype, mode=args.mode, which=args.which)
    size = args.size or args.input_size or predictor.default_size
    size_text = (f"input size {size}" if isinstance(size, int) else "size auto" if size == "auto"
                 else f"size {size[0]}x{size[1]}")
    mode = f", mode {predictor.mode}" if predictor.mode else ""
    what = "video" if args.video else "pair" if predictor.views == 2 else "image"
    print(f"{len(paths)} {what}(s){mode}, {size_text}, batch {args.batch_size}, "
          f"{args.dtype or 'the trained dtype'}, on {jax.default_backend()} ({jax.devices()[0].device_kind})")
    stereo = args.left or args.sbs
    doffs = stereo_folder.read_calibration(args.calibration).doffs if args.calibration and stereo else 0.0
    options = dict(input_size=size, batch_size=args.batch_size, outputs=outputs, doffs=doffs)
    if args.video:
        frames = predict_videos(predictor, paths, args.out, npz=args.npz, **options)
        done = f"{len(paths)} depth video(s) ({frames} frames)"
    else:
        predict_files(predictor, paths, args.out, **options)
        done = f"{len(paths)} depth map(s)"
    print(f"wrote {done} to {args.out} in {time.perf_counter() - start:.1f} s "
          f"({predictor.num_traces} input shape(s) compiled)")


if __name__ == "__main__":
    sys.exit(main())
