"""Per-sample training augmentation (spec §6.5) and test preprocessing (spec §8) of stereo records.

A record (see the data contract) holds the target view ``image_s`` and the other view ``image_o`` as uint8
(H_raw, W_raw, 3), ``K`` (3, 3) at the raw resolution, ``baseline`` (metres, > 0) and ``direct`` (+1 when
image_s is the left camera, -1 when it is the right). Training (spec §6.5 steps 2 and 4-7), in this order:

1. K (4, 4): row 0 scaled by full_W / W_raw, row 1 by full_H / H_raw; inv_K = pinv(K) in float64.
   T = identity with T[0, 3] = -baseline * direct (-0.54 for a KITTI left target).
2. Flip ('img' mode): swap the views and mirror both (direct and T unchanged: a mirrored right image is a
   left image of the mirrored scene); 'k' mode: mirror both without swapping, negate direct and T[0, 3];
   'none': never flip. The raw images are mirrored, before the resize.
3. Random scale s: both views resized ONCE with PIL Lanczos from the raw size straight to
   (int(full_H * s), int(full_W * s)). K is not changed (the network learns depth / s).
4. Crop (the original's ``BatchRandomCrop.get_params`` on the full size): th' = int(crop_H / s) + 1,
   tw' = int(crop_W / s) + 1, i ~ U{0, ..., full_H - th'}, j ~ U{0, ..., full_W - tw'};
   the crop_size window at top = int(i * s), left = int(j * s) of the resized images (always inside them).
5. ToTensor (uint8 / 255 -> float32) gives color_s, color_o; the colour augmentation (same parameters for
   both views, see :func:`apply_color_aug`) gives color_s_aug, color_o_aug.

Randomness comes from a ``numpy.random.Generator`` (the original mixes python's ``random`` and torch's
generator; the distributions are the same). :func:`draw_params` draws, in this order:
``rng.random()`` for the flip (flip if < 0.5; not drawn for flip mode 'none'), ``rng.uniform(*scale_range)``
for s, ``rng.integers(0, full_H - th' + 1)`` for i, ``rng.integers(0, full_W - tw' + 1)`` for j, then
:func:`draw_color_aug` (``rng.random()``, and if it is < prob: gamma, brightness, the 3 channel factors).
With ``scale_range=None`` (random rescale off) s = 1 is not drawn and the window is the crop itself:
``i ~ U{0, ..., full_H - crop_H}``, ``j ~ U{0, ..., full_W - crop_W}``, top = i, left = j.
"""

import dataclasses
from typing import NamedTuple

import numpy as np
from PIL import Image

FLIP_MODES = ("img", "k", "none")


class ColorAug(NamedTuple):
    """Colour augmentation parameters (spec §6.5 step 7): gamma, brightness, per-channel factors (3,)."""
    gamma: float
    brightness: float
    channels: np.ndarray


def draw_color_aug(rng: np.random.Generator, prob: float = 0.5) -> ColorAug | None:
    """With probability ``prob``: gamma ~ U(0.8, 1.2), brightness ~ U(0.5, 2), channels ~ U(0.8, 1.2)^3; else None."""
    if rng.random() >= prob:
        return None
    return ColorAug(rng.uniform(0.8, 1.2), rng.uniform(0.5, 2.0), rng.uniform(0.8, 1.2, 3))


def apply_color_aug(img: np.ndarray, aug: ColorAug | None) -> np.ndarray:
    """``I^gamma``, ``* brightness``, clip to <= 1, ``* channels``, clip to <= 1 (identity for None).

    img: (..., 3) float32 in [0, 1] -> (..., 3) float32.
    """
    if aug is None:
        return img
    out = np.minimum(img ** np.float32(aug.gamma) * np.float32(aug.brightness), 1)
    return np.minimum(out * aug.channels.astype(np.float32), 1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation: flip, scale s, crop window top-left (in resized-image pixels), colour.

    flip_mode says what a flip does ('img': swap and mirror; 'k': mirror, negate direct and T[0, 3]); a flip
    is impossible in mode 'none'.
    """
    flip: bool
    scale: float
    top: int
    left: int
    color: ColorAug | None
    flip_mode: str = "img"

    def __post_init__(self):
        if self.flip_mode not in FLIP_MODES:
            raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {self.flip_mode!r}")
        if self.flip and self.flip_mode == "none":
            raise ValueError("flip=True is impossible with flip_mode 'none'")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")


def resized_size(full_size, scale: float) -> tuple[int, int]:
    """Size (H, W) the raw images are resized to: ``(int(full_H * scale), int(full_W * scale))``."""
    return int(full_size[0] * scale), int(full_size[1] * scale)


def crop_source_size(crop_size, scale: float) -> tuple[int, int]:
    """The original's crop window at full size, (th', tw') = ``(int(crop_H / scale) + 1, int(crop_W / scale) + 1)``."""
    return int(crop_size[0] / scale) + 1, int(crop_size[1] / scale) + 1


def draw_params(rng: np.random.Generator, full_size, crop_size, *, flip_mode: str = "img",
                scale_range=(0.75, 1.5), color_aug_prob: float = 0.5) -> AugmentParams:
    """Draw one sample's augmentation (spec §6.5 steps 4-7; the draw order is in the module docstring).

    full_size, crop_size: (H, W) in pixels. scale_range: (low, high), 0 < low <= high; the crop must fit at the
    smallest scale: crop_source_size(crop_size, low) <= full_size (ValueError naming the sizes otherwise).
    None: no random rescale (s = 1), the crop must fit in full_size.
    """
    full_size, crop_size = _size(full_size, "full_size"), _size(crop_size, "crop_size")
    if flip_mode not in FLIP_MODES:
        raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {flip_mode!r}")
    fixed = scale_range is None  # no random rescale: s = 1 (not drawn) and the window is the crop itself
    low, high = (1.0, 1.0) if fixed else _scale_range(scale_range)

    def window(scale):
        return crop_size if fixed else crop_source_size(crop_size, scale)

    th, tw = window(low)
    if th > full_size[0] or tw > full_size[1]:
        raise ValueError(f"crop_size {crop_size} needs a window of {(th, tw)} at full_size {full_size} for the "
                         f"smallest scale {low}: larger than full_size")
    flip = flip_mode != "none" and bool(rng.random() < 0.5)
    scale = 1.0 if fixed else float(rng.uniform(low, high))
    th, tw = window(scale)
    i = int(rng.integers(0, full_size[0] - th + 1))
    j = int(rng.integers(0, full_size[1] - tw + 1))
    color = draw_color_aug(rng, color_aug_prob)
    return AugmentParams(flip=flip, scale=scale, top=int(i * scale), left=int(j * scale), color=color,
                         flip_mode=flip_mode)


def scaled_intrinsics(K: np.ndarray, raw_size, full_size) -> np.ndarray:
    """(4, 4) float64 K: the (3, 3) K at raw_size (H, W) with row 0 * full_W / W_raw and row 1 * full_H / H_raw."""
    K = np.asarray(K)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f"K must be a finite (3, 3) matrix, got shape {K.shape}: {K.tolist()}")
    k = np.eye(4)
    k[:3, :3] = K
    k[0] *= full_size[1] / raw_size[1]
    k[1] *= full_size[0] / raw_size[0]
    return k


def camera_arrays(K: np.ndarray, raw_size, full_size, baseline: float, direct: float) -> dict:
    """K, inv_K = pinv(K in float64), T (identity with T[0, 3] = -baseline * direct): (4, 4) float32 each."""
    k = scaled_intrinsics(K, raw_size, full_size)
    t = np.eye(4, dtype=np.float32)
    t[0, 3] = -baseline * direct
    return {"K": k.astype(np.float32), "inv_K": np.linalg.pinv(k).astype(np.float32), "T": t}


def lanczos_resize(image: np.ndarray, size) -> np.ndarray:
    """PIL Lanczos resize (what torchvision's Resize does on PIL images): uint8 (H, W, 3) -> uint8 (h, w, 3).

    size: (h, w); PIL takes (width, height).
    """
    h, w = size
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.Resampling.LANCZOS))


def to_float(image: np.ndarray) -> np.ndarray:
    """ToTensor without the transpose: uint8 -> float32 / 255 in [0, 1]."""
    return image.astype(np.float32) / np.float32(255)


def augment_pair(image_s: np.ndarray, image_o: np.ndarray, K: np.ndarray, baseline: float, direct: float,
                 params: AugmentParams, *, full_size, crop_size) -> dict:
    """Apply ``params`` to a stereo pair (spec §6.5, steps as in the module docstring).

    image_s, image_o: uint8 (H_raw, W_raw, 3), same shape; K (3, 3) at the raw resolution; baseline > 0 metres;
    direct +1 / -1. Returns color_s, color_o, color_s_aug, color_o_aug (crop_H, crop_W, 3) float32 in [0, 1];
    K, inv_K, T (4, 4) float32; direct () float32.
    """
    full_size, crop_size = _size(full_size, "full_size"), _size(crop_size, "crop_size")
    raw_size = _check_pair(image_s, image_o)
    baseline, direct = _check_baseline_direct(baseline, direct)
    size = resized_size(full_size, params.scale)
    if not (0 <= params.top <= size[0] - crop_size[0] and 0 <= params.left <= size[1] - crop_size[1]):
        raise ValueError(f"crop window {crop_size} at (top, left) = ({params.top}, {params.left}) does not fit in "
                         f"the image resized to {size} (scale {params.scale}, full_size {full_size})")
    if params.flip:
        image_s, image_o = image_s[:, ::-1], image_o[:, ::-1]
        if params.flip_mode == "img":
            image_s, image_o = image_o, image_s
        else:
            direct = -direct
    window = np.s_[params.top:params.top + crop_size[0], params.left:params.left + crop_size[1]]
    color_s, color_o = (to_float(lanczos_resize(img, size)[window]) for img in (image_s, image_o))
    return {"color_s": color_s, "color_o": color_o,
            "color_s_aug": apply_color_aug(color_s, params.color),
            "color_o_aug": apply_color_aug(color_o, params.color),
            **camera_arrays(K, raw_size, full_size, baseline, direct), "direct": np.float32(direct)}


def train_sample(record: dict, rng: np.random.Generator, *, full_size, crop_size, flip_mode: str = "img",
                 scale_range=(0.75, 1.5), color_aug_prob: float = 0.5) -> dict:
    """:func:`draw_params` then :func:`augment_pair` on a data-source record (image_s, image_o, K, baseline,
    direct; other keys ignored)."""
    params = draw_params(rng, full_size, crop_size, flip_mode=flip_mode, scale_range=scale_range,
                         color_aug_prob=color_aug_prob)
    return augment_pair(record["image_s"], record["image_o"], record["K"], record["baseline"], record["direct"],
                        params, full_size=full_size, crop_size=crop_size)


def eval_sample(record: dict, *, full_size) -> dict:
    """Test preprocessing (spec §8): both views Lanczos-resized to full_size, no augmentation.

    Returns color_s, color_o (full_H, full_W, 3) float32 in [0, 1]; K, inv_K, T (4, 4) float32 (as in
    training); direct () float32; and depth_gt / disp_gt (H_gt, W_gt) float32 at native resolution when the
    record has them.
    """
    full_size = _size(full_size, "full_size")
    raw_size = _check_pair(record["image_s"], record["image_o"])
    baseline, direct = _check_baseline_direct(record["baseline"], record["direct"])
    out = {"color_s": to_float(lanczos_resize(record["image_s"], full_size)),
           "color_o": to_float(lanczos_resize(record["image_o"], full_size)),
           **camera_arrays(record["K"], raw_size, full_size, baseline, direct), "direct": np.float32(direct)}
    for key in ("depth_gt", "disp_gt"):
        if key in record:
            out[key] = np.asarray(record[key], dtype=np.float32)
    return out


def _size(size, name: str) -> tuple[int, int]:
    """(H, W) as a tuple of two positive ints, or a ValueError naming ``name`` and the value."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (H, W), got {size!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"{name} must be two positive integers (H, W), got {size!r}")
    return int(h), int(w)


def _scale_range(scale_range) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be (low, high), got {scale_range!r}") from None
    if not (np.isfinite(high) and 0 < low <= high):
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    return low, high


def _check_pair(image_s, image_o) -> tuple[int, int]:
    """Both views uint8 (H, W, 3) of the same shape; returns (H, W)."""
    for name, img in (("image_s", image_s), ("image_o", image_o)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            desc = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"{name} must be a uint8 (H, W, 3) array, got {desc}")
    if image_s.shape != image_o.shape:
        raise ValueError(f"image_s {image_s.shape} and image_o {image_o.shape} must have the same shape")
    return image_s.shape[:2]


def _check_baseline_direct(baseline, direct) -> tuple[float, float]:
    baseline, direct = float(baseline), float(direct)
    if not (np.isfinite(baseline) and baseline > 0):
        raise ValueError(f"baseline must be a positive number of metres, got {baseline}")
    if direct not in (1.0, -1.0):
        raise ValueError(f"direct must be +1 or -1, got {direct}")
    return baseline, direct
