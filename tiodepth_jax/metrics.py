"""KITTI depth and disparity metrics (spec §8.1, §8.2), in numpy on the host.

The caller brings the prediction to the ground-truth size first: :func:`resize_to_gt` (depth, bilinear,
align_corners=False, no antialias, as the original's ``metric_depth``) or :func:`resize_disparity_to_gt`
(disparity, also multiplied by ``W_gt / W_pred``). The metric functions take arrays of equal shape.

Ground truth that is 0, negative, inf or NaN is invalid and never scored. Both metrics take a ``crop``, the
image region scored, in fractions of the GT size (:data:`CROPS`): 'garg', the crop of the original's
``metric_depth`` (spec §8.1 calls it "Garg/Eigen"; Monodepth2 and TiO-Depth score the Eigen split with it),
'eigen', Eigen et al.'s crop (Monodepth's ``--eigen_crop``), or 'none'.

Masks with no valid pixel raise ``ValueError`` (the original would return NaN and, in its per-image average,
silently poison the whole mean). Errors are accumulated in float64 (the original uses float32 tensors; the
difference is ~1e-7 relative).
"""

import numpy as np

from tiodepth_jax.ops.resize import interpolate_bilinear

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
DISPARITY_METRICS = ("epe_all", "d1_all")
MASK_MODES = ("valid", "stereo2015")
# Crops as fractions of the GT size: rows top, bottom; columns left, right.
CROPS = {"garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
         "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
         "none": None}


def resize_to_gt(pred: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of a prediction (h, w) to ``gt_shape`` (H, W).

    Uses ``ops.resize.interpolate_bilinear`` (PyTorch-exact). Returns (H, W) float32.
    """
    x = np.asarray(pred, np.float32)[None, :, :, None]
    return np.asarray(interpolate_bilinear(x, size=tuple(gt_shape), align_corners=False))[0, :, :, 0]


def resize_disparity_to_gt(pred_disp: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """Disparity (h, w) in pixels of the prediction -> (H, W) in GT pixels: resized, times ``W / w`` (§8.2)."""
    return resize_to_gt(pred_disp, gt_shape) * np.float32(gt_shape[1] / pred_disp.shape[1])


def disparity_from_depth(depth: np.ndarray, focal_baseline: float) -> np.ndarray:
    """Disparity in pixels = fx * baseline / depth, with fx in pixels at the depth map's resolution and the
    baseline in the depth's unit; 0 where the depth is invalid (<= 0 or not finite). (H, W) float32."""
    depth = np.asarray(depth, np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, focal_baseline / np.where(valid, depth, 1.0), 0.0).astype(np.float32)


def crop_box(crop: str, height: int, width: int) -> tuple[int, int, int, int]:
    """A crop of :data:`CROPS` (not 'none') as (top, bottom, left, right), half-open: rows [top, bottom),
    columns [left, right); ``int(fraction * size)``. At 375x1242: garg (153, 371, 44, 1197), eigen
    (124, 342, 44, 1197)."""
    top, bottom, left, right = CROPS[crop]
    return int(top * height), int(bottom * height), int(left * width), int(right * width)


def crop_mask(shape: tuple[int, int], crop: str) -> np.ndarray:
    """(H, W) bool: True inside ``crop`` (everywhere for 'none'); ValueError for an unknown crop."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; known: {', '.join(CROPS)}")
    if CROPS[crop] is None:
        return np.ones(shape, bool)
    top, bottom, left, right = crop_box(crop, *shape)
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def depth_mask(gt: np.ndarray, *, min_depth: float, max_depth: float, mask_mode: str = "valid",
               crop: str = "none") -> np.ndarray:
    """Valid-pixel mask (H, W) bool of a GT depth map (H, W) (spec §8.1 step 2): finite GT inside ``crop``
    and 'valid': gt > min_depth (no upper bound: far GT is kept and clamped later, the KITTI rule) or
    'stereo2015': min_depth < gt < max_depth."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    mask = np.isfinite(gt) & (gt > min_depth) & crop_mask(gt.shape, crop)
    return mask & (gt < max_depth) if mask_mode == "stereo2015" else mask


def lower_median(x: np.ndarray) -> float:
    """``torch.median`` of a flat array: the lower of the two middle values for an even count."""
    return float(np.partition(x, (x.size - 1) // 2)[(x.size - 1) // 2])


def depth_metrics(pred: np.ndarray, gt: np.ndarray, *, min_depth: float = 0.5, max_depth: float = 80.0,
                  mask_mode: str = "valid", crop: str = "none", median_scaling: bool = False) -> dict:
    """KITTI depth metrics of one image (spec §8.1 steps 2-4).

    pred, gt: (H, W) depth in metres, same shape (resize ``pred`` first with :func:`resize_to_gt`).
    min_depth: 0.5 in the fork, 0 in the original (with 0 a prediction clamped to 0 gives inf metrics, as
    there). Steps: mask (:func:`depth_mask`); gt = clamp(gt[mask], min_depth, max_depth); pred = pred[mask];
    scale = lower_median(gt) / lower_median(pred); pred *= scale only if ``median_scaling``;
    pred = clamp(pred, min_depth, max_depth). Spec §8.1's depth_kitti is mask_mode 'valid' with crop 'garg',
    its depth_kitti_stereo2015 mask_mode 'stereo2015' with crop 'none'.

    Returns abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 (fractions, not %) and scale, as floats.
    Raises ValueError if the mask selects no pixel.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; resize pred with resize_to_gt")
    mask = depth_mask(gt, min_depth=min_depth, max_depth=max_depth, mask_mode=mask_mode, crop=crop)
    if not mask.any():
        raise ValueError(f"no valid ground-truth pixel (mask_mode={mask_mode!r}, crop={crop!r}, "
                         f"min_depth={min_depth})")
    g = np.clip(gt[mask], min_depth, max_depth)
    p = pred[mask]
    scale = lower_median(g) / lower_median(p)
    if median_scaling:
        p = p * scale
    p = np.clip(p, min_depth, max_depth)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(g / p, p / g)
        return {
            "abs_rel": float(np.mean(np.abs(g - p) / g)),
            "sq_rel": float(np.mean((g - p) ** 2 / g)),
            "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
            "rmse_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
            "a1": float(np.mean(ratio < 1.25)),
            "a2": float(np.mean(ratio < 1.25 ** 2)),
            "a3": float(np.mean(ratio < 1.25 ** 3)),
            "scale": float(scale),
        }


def disparity_metrics(pred_disp: np.ndarray, gt_disp: np.ndarray, *, crop: str = "none") -> dict:
    """KITTI 2015 disparity metrics of one image (spec §8.2) over finite GT disparity > 0 inside ``crop``.

    pred_disp, gt_disp: (H, W) in GT pixels (use :func:`resize_disparity_to_gt`). With err = |gt - pred|:
    epe_all = mean(err); d1_all = 100 * mean(err > 3 and err / gt > 0.05) (percent, KITTI's outlier rule).
    Raises ValueError if no pixel is valid.
    """
    pred, gt = np.asarray(pred_disp, np.float64), np.asarray(gt_disp, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; use resize_disparity_to_gt")
    mask = np.isfinite(gt) & (gt > 0) & crop_mask(gt.shape, crop)
    if not mask.any():
        raise ValueError(f"no valid ground-truth disparity (finite, > 0, crop={crop!r})")
    g, err = gt[mask], np.abs(gt[mask] - pred[mask])
    return {"epe_all": float(np.mean(err)), "d1_all": float(100 * np.mean((err > 3) & (err / g > 0.05)))}


def mean_metrics(per_image: list[dict]) -> dict:
    """Average each metric over images (spec §8.1 step 5): list of equal-keyed dicts -> dict of floats."""
    if not per_image:
        raise ValueError("no per-image metrics to average")
    return {key: float(np.mean([m[key] for m in per_image])) for key in per_image[0]}
