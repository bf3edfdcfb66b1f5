"""KITTI depth and disparity metrics (spec §8.1, §8.2), in numpy on the host.

The caller brings the prediction to the ground-truth size first: :func:`resize_to_gt` (depth, bilinear,
align_corners=False, no antialias, as the original's ``metric_depth``) or :func:`resize_disparity_to_gt`
(disparity, also multiplied by ``W_gt / W_pred``). The metric functions take arrays of equal shape.

Masks with no valid pixel raise ``ValueError`` (the original would return NaN and, in its per-image average,
silently poison the whole mean). Errors are accumulated in float64 (the original uses float32 tensors; the
difference is ~1e-7 relative).
"""

import numpy as np

from tiodepth_jax.ops.resize import interpolate_bilinear

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MASK_MODES = ("eigen", "stereo2015", "valid")

# Garg / Eigen crop as fractions of the GT size (rows top, bottom; columns left, right).
_EIGEN_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def resize_to_gt(pred: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of a prediction (h, w) to ``gt_shape`` (H, W).

    Uses ``ops.resize.interpolate_bilinear`` (PyTorch-exact). Returns (H, W) float32.
    """
    x = np.asarray(pred, np.float32)[None, :, :, None]
    return np.asarray(interpolate_bilinear(x, size=tuple(gt_shape), align_corners=False))[0, :, :, 0]


def resize_disparity_to_gt(pred_disp: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """Disparity (h, w) in pixels of the prediction -> (H, W) in GT pixels: resized, times ``W / w`` (§8.2)."""
    return resize_to_gt(pred_disp, gt_shape) * np.float32(gt_shape[1] / pred_disp.shape[1])


def eigen_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """Garg/Eigen crop (top, bottom, left, right), half-open: rows [top, bottom), columns [left, right).

    ``int(0.40810811 H), int(0.99189189 H), int(0.03594771 W), int(0.96405229 W)``; 375x1242 -> (153, 371, 44, 1197).
    """
    top, bottom, left, right = _EIGEN_CROP
    return int(top * height), int(bottom * height), int(left * width), int(right * width)


def depth_mask(gt: np.ndarray, *, min_depth: float, max_depth: float, mask_mode: str) -> np.ndarray:
    """Valid-pixel mask (H, W) bool of a GT depth map (H, W) (spec §8.1 step 2).

    'eigen': gt > min_depth inside the Eigen crop (no upper bound: far GT is kept and clamped later);
    'stereo2015': min_depth < gt < max_depth, no crop; 'valid': gt > min_depth, no crop.
    """
    if mask_mode == "eigen":
        top, bottom, left, right = eigen_crop(*gt.shape)
        crop = np.zeros(gt.shape, bool)
        crop[top:bottom, left:right] = True
        return (gt > min_depth) & crop
    if mask_mode == "stereo2015":
        return (gt > min_depth) & (gt < max_depth)
    if mask_mode == "valid":
        return gt > min_depth
    raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")


def lower_median(x: np.ndarray) -> float:
    """``torch.median`` of a flat array: the lower of the two middle values for an even count."""
    return float(np.partition(x, (x.size - 1) // 2)[(x.size - 1) // 2])


def depth_metrics(pred: np.ndarray, gt: np.ndarray, *, min_depth: float = 0.5, max_depth: float = 80.0,
                  mask_mode: str = "eigen", median_scaling: bool = False) -> dict:
    """KITTI depth metrics of one image (spec §8.1 steps 2-4).

    pred, gt: (H, W) depth in metres, same shape (resize ``pred`` first with :func:`resize_to_gt`).
    min_depth: 0.5 in the fork, 0 in the original (with 0 a prediction clamped to 0 gives inf metrics, as
    there). Steps: mask (:func:`depth_mask`); gt = clamp(gt[mask], min_depth, max_depth); pred = pred[mask];
    scale = lower_median(gt) / lower_median(pred); pred *= scale only if ``median_scaling``;
    pred = clamp(pred, min_depth, max_depth).

    Returns abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 (fractions, not %) and scale, as floats.
    Raises ValueError if the mask selects no pixel.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; resize pred with resize_to_gt")
    mask = depth_mask(gt, min_depth=min_depth, max_depth=max_depth, mask_mode=mask_mode)
    if not mask.any():
        raise ValueError(f"no valid ground-truth pixel (mask_mode={mask_mode!r}, min_depth={min_depth})")
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


def disparity_metrics(pred_disp: np.ndarray, gt_disp: np.ndarray) -> dict:
    """KITTI 2015 disparity metrics of one image (spec §8.2) over GT disparity > 0.

    pred_disp, gt_disp: (H, W) in GT pixels (use :func:`resize_disparity_to_gt`). With err = |gt - pred|:
    epe_all = mean(err); d1_all = 100 * mean(err > 3 and err / gt > 0.05) (percent).
    Raises ValueError if no GT disparity is positive.
    """
    pred, gt = np.asarray(pred_disp, np.float64), np.asarray(gt_disp, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; use resize_disparity_to_gt")
    mask = gt > 0
    if not mask.any():
        raise ValueError("no valid ground-truth disparity (gt > 0)")
    g, err = gt[mask], np.abs(gt[mask] - pred[mask])
    return {"epe_all": float(np.mean(err)), "d1_all": float(100 * np.mean((err > 3) & (err / g > 0.05)))}


def mean_metrics(per_image: list[dict]) -> dict:
    """Average each metric over images (spec §8.1 step 5): list of equal-keyed dicts -> dict of floats."""
    if not per_image:
        raise ValueError("no per-image metrics to average")
    return {key: float(np.mean([m[key] for m in per_image])) for key in per_image[0]}
