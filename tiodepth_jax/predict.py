"""Relative depth for image files with a converted checkpoint, jitted, batched, on any JAX backend.

Usage:
  python -m tiodepth_jax.predict --checkpoint DIR --input PATH [PATH ...] --out DIR
      [--input-size 518] [--batch-size 4] [--dtype float32|bfloat16] [--no-png]
  python -m tiodepth_jax.predict --demo --out DIR [--input-size 518] [--batch-size 4] [--dtype ...]

  --checkpoint   a directory written by `tiodepth_jax.checkpoint.save_model` (e.g. by the converters)
  --input        image files and/or folders (a folder's .png .jpg .jpeg .bmp .tif .tiff .webp files,
                 sorted, not recursive)
  --out          output folder: <stem>.npy (float32 (H, W) depth at the image's own resolution) and
                 <stem>.png (Spectral_r colour map, per-image min/max normalised, as Depth-Anything-V2's
                 run.py draws it); inputs sharing a stem (compared case-insensitively), or an output
                 that would overwrite an input, are refused before anything runs
  --input-size   lower bound S of both network input sides (see below)
  --batch-size   images per forward pass
  --dtype        compute dtype; parameters stay float32 ("bfloat16" halves activation memory)
  --no-png       write only the .npy files
  --demo         no checkpoint, no input: a ViT-S Depth-Anything-V2 with RANDOM weights (nnx.Rngs(0))
                 runs on two generated 240x320 scenes (written to <out>/demo_inputs/), exercising the
                 whole pipeline without downloads; its depth maps are meaningless

Model kinds are dispatched on the checkpoint's `model.json` "kind"; "depth_anything_v2" (relative,
inverse depth, larger = nearer) is the one supported so far.

Preprocessing: Depth-Anything-V2's `infer_image` policy.
  1. Decode to RGB float in [0, 1] (EXIF orientation applied, as cv2.imread does).
  2. Keep-aspect-ratio resize, resize_method "lower_bound": scale = max(S / H, S / W) for S =
     --input-size, and each side becomes round(side * scale / 14) * 14 (numpy's round-half-even),
     or ceil(side * scale / 14) * 14 where that falls below S; both sides are >= S.
  3. Bicubic resampling of the float image with PIL (BICUBIC, per channel in float32 mode "F", so no
     8-bit rounding or clipping). Upstream uses cv2.resize INTER_CUBIC, whose kernel is Keys a = -0.75
     without antialiasing, while PIL's is a = -0.5 and widens its support when downscaling; inputs are
     therefore close to, not bit-identical with, upstream's (equal policy and sizes).
  4. ImageNet normalisation: (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225).
  5. The model gives (B, h, w) depth at the network resolution; each map is resized back to its
     image's (H, W) with bilinear interpolation, align_corners=True (upstream's F.interpolate call).

Execution: the model is split once into graphdef / state and ONE jitted forward serves every input
shape (jax.jit caches one executable per shape). Images are grouped by network input shape (read from
the file headers first, so unreadable files fail before any compute) and run in batches of
min(--batch-size, images of that shape); a short last batch is zero-padded, so each shape compiles once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image
from tqdm import tqdm

from tiodepth_jax.checkpoint import load_model, read_model_meta
from tiodepth_jax.images import image_size, list_images, read_image, save_depth_outputs, write_png
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.ops.resize import interpolate_bilinear

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEMO_IMAGE_HW = (240, 320)
DEMO_NUM_IMAGES = 2


class UserError(Exception):
    """A problem with the command's inputs: reported as one line and exit code 2, without a traceback."""


@contextlib.contextmanager
def user_errors():
    """Turn the file and checkpoint errors raised inside the block into `UserError`s."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e


# ---------------------------------------------------------------------------------------------------
# Preprocessing (Depth-Anything-V2 `infer_image`)
# ---------------------------------------------------------------------------------------------------

def _constrain_to_multiple(x: float, multiple: int, min_val: int) -> int:
    """`Resize.constrain_to_multiple_of`: round to a multiple, or ceil when rounding falls below min_val."""
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    return y


def network_input_shape(h: int, w: int, input_size: int, multiple: int = 14) -> tuple[int, int]:
    """(h, w) of the network input for an H x W image: keep aspect ratio, lower bound `input_size`."""
    scale = max(input_size / h, input_size / w)
    return (_constrain_to_multiple(scale * h, multiple, input_size),
            _constrain_to_multiple(scale * w, multiple, input_size))


def preprocess(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] -> (h, w, 3) float32: bicubic resize, ImageNet normalisation."""
    h, w = shape
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                           .resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)]
    return (np.stack(channels, axis=-1) - IMAGENET_MEAN) / IMAGENET_STD


@functools.partial(jax.jit, static_argnames="size")
def resize_depth(depth, size: tuple[int, int]):
    """(h, w) -> (H, W): bilinear, align_corners=True, as upstream resizes the prediction back."""
    return interpolate_bilinear(depth[None, :, :, None], size=size, align_corners=True)[0, :, :, 0]


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Batch:
    """Images (indices into the input list) sharing one network input shape, run as `padded_size`."""

    shape: tuple[int, int]
    indices: tuple[int, ...]
    padded_size: int


def plan_batches(sizes, input_size: int, batch_size: int, multiple: int = 14) -> list[Batch]:
    """Group images by network input shape (first-seen order) and cut each group into batches.

    Every batch of a shape has the same size, min(batch_size, images of that shape), so that each shape
    is compiled exactly once; the last batch of a group is padded.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault(network_input_shape(h, w, input_size, multiple), []).append(i)
    batches = []
    for shape, indices in groups.items():
        size = min(batch_size, len(indices))
        batches += [Batch(shape, tuple(indices[s:s + size]), size) for s in range(0, len(indices), size)]
    return batches


def output_stems(paths, out_dir) -> list[str]:
    """The output stem of each input. Raises ValueError when two inputs would write the same files
    (stems compared case-insensitively, as case-insensitive file systems do) or an output would
    overwrite an input."""
    owner: dict[str, Path] = {}
    for p in paths:
        other = owner.setdefault(p.stem.casefold(), p)
        if other is not p:
            raise ValueError(f"inputs {other} and {p} would both write {p.stem}.npy/.png; "
                             "rename one or run them separately")
    inputs = {p.resolve() for p in paths}
    for p in paths:
        for out in (Path(out_dir) / f"{p.stem}.npy", Path(out_dir) / f"{p.stem}.png"):
            if out.resolve() in inputs:
                raise ValueError(f"output {out} would overwrite an input image; choose another --out")
    return [p.stem for p in paths]


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------

class DepthPredictor:
    """A Depth-Anything-V2 model split once into graphdef / state, with one jitted forward.

    `predictor(x)`: (B, h, w, 3) normalised images, h and w multiples of the patch size ->
    (B, h, w) float32 depth. `num_traces` counts the shapes compiled so far.
    """

    def __init__(self, model: DepthAnythingV2):
        graphdef, self.state = nnx.split(model)
        self.patch_size = model.cfg.dinov2.patch_size
        self.num_traces = 0
        self._forward = jax.jit(functools.partial(self._apply, graphdef))

    def _apply(self, graphdef, state, x):
        self.num_traces += 1  # runs once per trace, i.e. once per new input shape
        return nnx.merge(graphdef, state)(x)

    def __call__(self, x):
        return self._forward(self.state, x)

    def lower(self, x):
        """The jitted forward lowered for `x`'s shape; `.compile()` fills the cache that calls use."""
        return self._forward.lower(self.state, x)


PREDICTORS = {"depth_anything_v2": DepthPredictor}


def load_predictor(checkpoint, dtype=jnp.float32):
    """The predictor for the model kind stored at `checkpoint` (raises ValueError for other kinds)."""
    kind = read_model_meta(checkpoint).get("kind")
    if kind not in PREDICTORS:
        raise ValueError(f"{checkpoint} holds a {kind!r} model; predict supports: {', '.join(PREDICTORS)}")
    return PREDICTORS[kind](load_model(checkpoint, kind=kind, dtype=dtype))


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------

def run_batch(predictor: DepthPredictor, images: list[np.ndarray], batch: Batch) -> list[np.ndarray]:
    """Preprocess, pad to the batch size, predict and resize back: [(H, W, 3)] -> [(H, W) float32]."""
    x = np.zeros((batch.padded_size, *batch.shape, 3), np.float32)  # (B, h, w, 3)
    for k, image in enumerate(images):
        x[k] = preprocess(image, batch.shape)
    depth = predictor(x)  # (B, h, w)
    return [np.asarray(resize_depth(depth[k], image.shape[:2])) for k, image in enumerate(images)]


def predict_files(predictor: DepthPredictor, paths, out_dir, *, input_size: int = 518, batch_size: int = 4,
                  png: bool = True) -> None:
    """Write `<out_dir>/<stem>.npy` and `.png` for every image in `paths` (see the module docstring)."""
    paths = [Path(p) for p in paths]
    with user_errors():
        stems = output_stems(paths, out_dir)
        sizes = [image_size(p) for p in paths]
    batches = plan_batches(sizes, input_size, batch_size, predictor.patch_size)
    with tqdm(total=len(paths), unit="img", desc="depth") as bar:
        for batch in batches:
            with user_errors():
                images = [read_image(paths[i]) for i in batch.indices]
            depths = run_batch(predictor, images, batch)
            with user_errors():
                for i, depth in zip(batch.indices, depths):
                    save_depth_outputs(out_dir, stems[i], depth, png=png)
            bar.update(len(batch.indices))


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

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="converted checkpoint directory")
    parser.add_argument("--input", nargs="+", metavar="PATH", help="image files and/or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--input-size", type=int, default=518, metavar="S",
                        help="lower bound of both network input sides (default 518)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per forward pass (default 4)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype")
    parser.add_argument("--no-png", action="store_true", help="write only the .npy depth maps")
    parser.add_argument("--demo", action="store_true",
                        help="random-weight ViT-S on generated images; needs no checkpoint or input")
    args = parser.parse_args(argv)
    if args.demo and (args.checkpoint or args.input):
        parser.error("--demo takes neither --checkpoint nor --input")
    if not args.demo and not (args.checkpoint and args.input):
        parser.error("--checkpoint and --input are required (or use --demo)")
    if args.input_size < 1 or args.batch_size < 1:
        parser.error("--input-size and --batch-size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    start = time.perf_counter()
    try:
        if args.demo:
            print("DEMO: Depth-Anything-V2 ViT-S with RANDOM weights (nnx.Rngs(0)); the depth maps are "
                  "meaningless, this only exercises the pipeline.")
            predictor = demo_predictor(dtype)
            paths = write_demo_inputs(args.out / "demo_inputs")
        else:
            with user_errors():
                paths = list_images(args.input)
                predictor = load_predictor(args.checkpoint, dtype)
        print(f"{len(paths)} image(s), input size {args.input_size}, batch {args.batch_size}, {args.dtype}, "
              f"on {jax.default_backend()} ({jax.devices()[0].device_kind})")
        predict_files(predictor, paths, args.out, input_size=args.input_size, batch_size=args.batch_size,
                      png=not args.no_png)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} depth map(s) to {args.out} in {time.perf_counter() - start:.1f} s "
          f"({predictor.num_traces} input shape(s) compiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
