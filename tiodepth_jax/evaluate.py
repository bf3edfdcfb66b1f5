"""Evaluate a TiO-Depth checkpoint on a set with ground truth: depth metrics and EPE / D1 per path (spec §8).

Usage:
  python -m tiodepth_jax.evaluate --config configs/X.yaml --checkpoint PATH [--which latest|best|STEP]
      [--dataset NAME] [--data-dir DIR] [--split S] [--modes Mono Stereo Refine] [--size H W]
      [--metric depth_kitti|depth_kitti_mono|depth_kitti_stereo2015] [--crop garg|eigen|none] [--min-depth D]
      [--median-scaling] [--post-process none|fpp|gpp|mspp] [--max-samples N] [--out DIR]
      [--save-predictions] [key=value ...]

  --config       the run's YAML config; its `val` section gives the defaults: val.name, val.data_dir,
                 val.split (dataset), val.image_size (see --size), val.modes, val.metric, val.min_depth,
                 val.max_depth, val.max_samples. `key.sub=value` arguments override config entries
                 (e.g. val.max_samples=10), anywhere on the command line, also right after --modes.
  --checkpoint   a converted model checkpoint (a directory with model.json, `tiodepth_jax.checkpoint`), or
                 a training run's checkpoints: the run's workdir, its checkpoint directory (the newest step
                 is used, or the one --which names) or one step directory of it (<dir>/<step>). The model
                 config and compute dtype are the checkpoint's own (model.json, or the resolved config
                 stored with the training checkpoints); `tiodepth_jax.checkpoint.load` reads them.
  --which        a training run's checkpoint: latest (default), best (the best validation score) or a step
  --dataset      TFDS dataset name (`tfds.data_source`): kitti_eigen_test/raw, kitti_eigen_test/improved,
                 kitti_stereo2015 or stereo_folder (default val.name, or data.name)
  --data-dir     TFDS data directory holding the built dataset (default val.data_dir, or data.data_dir);
                 build it with `python -m tiodepth_jax.data.build`
  --split        dataset split (default val.split; for an explicit --dataset: train for kitti_stereo2015,
                 test otherwise)
  --modes        paths to evaluate, run in the order Mono, Stereo, Refine (default val.modes)
  --size H W     network input size (multiples of 14). Without it, the first of: val.image_size given as a
                 key=value argument; the size the checkpoint was trained at (a training run's data.image_size,
                 which an export records; as `predict` runs it); the --config's val.image_size. Never the
                 training crop (model.image_size): the fork trains on 252x840 crops of 378x1260 images, so a
                 whole image at the crop size would be seen at 2/3 of the scale the network learned.
  --metric       depth_kitti: GT > min_depth, GT clamped to [min_depth, max_depth]; depth_kitti_mono: the same
                 with median scaling; depth_kitti_stereo2015: min_depth < GT < max_depth. Default val.metric;
                 for an explicit --dataset depth_kitti_stereo2015 on kitti_stereo2015, depth_kitti otherwise
  --crop         the image region scored, by the depth and the disparity metrics (`metrics.CROPS`, fractions
                 of the GT size): garg (rows 0.408-0.992, columns 0.036-0.964: the original's metric_depth,
                 spec §8.1's "Garg/Eigen crop"), eigen (Eigen et al.'s, rows 0.332-0.914) or none. Default
                 garg on kitti_eigen_test/*, none on every other set (kitti_stereo2015, stereo_folder)
  --min-depth    lower depth bound of the mask and the clamps (default val.min_depth: 0.5 as in the fork;
                 the original used 0)
  --median-scaling  scale each prediction by median(GT) / median(pred) (implied by depth_kitti_mono)
  --post-process Mono/Refine only (spec §8.3, tiodepth_jax.postprocess): fpp (flip, the README's "pp"),
                 gpp (Monodepth), mspp (FAL-Net; 2/3 of the input size must be multiples of 14). Stereo
                 results are never post-processed, and EPE/D1 use the raw disparity, as in the original.
  --max-samples  evaluate only the first N samples (default val.max_samples, None = all)
  --out          output folder (default eval_res): per_image.jsonl (one line per sample and path: index,
                 name, mode and each metric) and summary.json (settings with crop and input size, per-path
                 means, timings)
  --save-predictions  also write <out>/predictions/<index:05d>_<mode>.npz, one per sample and path: depth and
                 disp, the prediction at the GT resolution as it was scored, and depth_gt and disp_gt, the
                 ground truth it was scored against; (H, W) float32 each (np.savez_compressed)

Per sample: `augment.eval_sample` (PIL Lanczos resize of both views to the input size), one jitted forward
(one compile per input shape) that runs the paths and the post-processing pass, then each path's depth is
resized bilinearly (align_corners=False) to the GT size and its disparity (the path's disparity output, in
pixels of the network input) resized the same way and multiplied by W_gt / W_pred (`prediction_at_gt`), and
both are scored (`score`): `metrics.depth_metrics` against depth_gt, `metrics.disparity_metrics` (EPE-all,
D1-all: an error > 3 px and > 5 % of the GT is an outlier) against the GT disparity: the record's disp_gt
(kitti_stereo2015) or K[0, 0] * baseline / depth_gt, with K (stored at the image size) rescaled to the GT
width (`disparity_gt`). GT that is 0, inf or NaN is not scored. Metrics are averaged over samples. A
summary table (one row per path: the 7 depth metrics, scale, EPE, D1) is printed at the end.
The Stereo path's disparity is matched between the views, so on your own rig its EPE / D1 do not depend on
the model's d2d, while depth (d2d / disparity) is metric only when the network input has fx * baseline ~=
d2d (see `python -m tiodepth_jax.predict --help`).
Problems with the inputs (checkpoint, dataset, modes, settings) end with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from tiodepth_jax import postprocess
from tiodepth_jax.checkpoint import load, parse_which
from tiodepth_jax.config import PATCH, TrainConfig, load_config, parse_override
from tiodepth_jax.data.augment import eval_sample
from tiodepth_jax.data.pipeline import open_source
from tiodepth_jax.errors import InputError, run_command
from tiodepth_jax.inference import DEPTH_KEYS, DISP_KEYS, POST_PROCESSED_MODES, Jitted, predict_outputs
from tiodepth_jax.metrics import (CROPS, DEPTH_METRICS, DISPARITY_METRICS, depth_metrics, disparity_from_depth,
                                  disparity_metrics, mean_metrics, resize_disparity_to_gt, resize_to_gt)
from tiodepth_jax.models.tiodepth import PATHS, TiODepth

METRICS = ("depth_kitti", "depth_kitti_mono", "depth_kitti_stereo2015")
POST_PROCESS = ("none",) + postprocess.METHODS
DEFAULT_SPLITS = {"kitti_stereo2015": "train"}  # split of an explicit --dataset; others: "test"
DEFAULT_CROPS = {"kitti_eigen_test": "garg"}     # crop of a dataset; others: "none"
COLUMNS = DEPTH_METRICS + ("scale",) + DISPARITY_METRICS  # a path's metrics, in table order
PREDICTIONS = "predictions"                      # --save-predictions folder under --out


# ---------------------------------------------------------------------------------------------------
# Metrics of one sample
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MetricOptions:
    """How a prediction is scored (spec §8.1, §8.2).

    metric: 'depth_kitti' (GT > min_depth, clamped to [min_depth, max_depth]), 'depth_kitti_mono' (the same
    with median scaling) or 'depth_kitti_stereo2015' (min_depth < GT < max_depth). crop: a key of
    `metrics.CROPS`; None takes the metric's own, 'garg' for depth_kitti* and 'none' for
    depth_kitti_stereo2015 (what training validation scores with).
    """

    metric: str = "depth_kitti"
    min_depth: float = 0.5
    max_depth: float = 80.0
    median_scaling: bool = False
    crop: str | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.crop is None:
            object.__setattr__(self, "crop", "none" if self.metric == "depth_kitti_stereo2015" else "garg")
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; known: {', '.join(CROPS)}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"needs 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    @property
    def mask_mode(self) -> str:
        return "stereo2015" if self.metric == "depth_kitti_stereo2015" else "valid"

    @property
    def scaled(self) -> bool:
        """Median scaling: asked for, or implied by a '*_mono' metric."""
        return self.median_scaling or self.metric.endswith("_mono")


def _map(x) -> np.ndarray:
    """One map as (h, w): accepts (h, w), (h, w, 1) or (1, h, w, 1)."""
    x = np.asarray(x)
    return x.reshape(x.shape[-3:-1]) if x.ndim > 2 else x


def prediction_at_gt(outputs: dict, mode: str, gt_shape, disparity: bool = True) -> dict[str, np.ndarray]:
    """A path's prediction at the GT resolution, (H, W) float32 each: 'depth', resized bilinearly
    (align_corners False), and with ``disparity`` 'disp', the path's disparity (pixels of the network input)
    resized and multiplied by W_gt / w (`metrics.resize_disparity_to_gt`).

    outputs: the network's outputs for one sample (names of `TiODepth`, e.g. 'refmono_depth_0_s',
    'refmono_disp_0_s'), each (h, w), (h, w, 1) or (1, h, w, 1).
    """
    pred = {"depth": resize_to_gt(_map(outputs[DEPTH_KEYS[mode]]), gt_shape)}
    if disparity:
        pred["disp"] = resize_disparity_to_gt(_map(outputs[DISP_KEYS[mode]]), gt_shape)
    return pred


def score(pred: dict, sample: dict, opts: MetricOptions) -> dict[str, float]:
    """Metrics of a `prediction_at_gt`: `metrics.depth_metrics` against sample['depth_gt'] (H, W) in metres
    and, when the sample has 'disp_gt' (H, W) in GT pixels, `metrics.disparity_metrics` (EPE, D1) against it;
    0 = invalid in both. Names in `COLUMNS` order; ValueError when no GT pixel is valid."""
    m = depth_metrics(pred["depth"], sample["depth_gt"], min_depth=opts.min_depth, max_depth=opts.max_depth,
                      mask_mode=opts.mask_mode, crop=opts.crop, median_scaling=opts.scaled)
    if "disp_gt" in sample:
        m.update(disparity_metrics(pred["disp"], sample["disp_gt"], crop=opts.crop))
    return m


def evaluate_prediction(outputs: dict, sample: dict, modes, opts: MetricOptions) -> dict[str, dict[str, float]]:
    """Metrics of one sample for each path in ``modes``: {mode: {metric: value}} (`prediction_at_gt`, then
    `score`; EPE / D1 when the sample has 'disp_gt')."""
    gt_shape = np.shape(sample["depth_gt"])
    return {mode: score(prediction_at_gt(outputs, mode, gt_shape, "disp_gt" in sample), sample, opts)
            for mode in modes}


# ---------------------------------------------------------------------------------------------------
# The forward pass
# ---------------------------------------------------------------------------------------------------

class Evaluator(Jitted):
    """:func:`predict_outputs` of ``modes`` jitted over a model (`inference.Jitted`).

    ``evaluator(sample)``: an `augment.eval_sample` dict (no batch axis) -> numpy outputs of that sample,
    each (H, W, 1).
    """

    def __init__(self, model: TiODepth, modes, post_process: str = "none"):
        self.modes = tuple(modes)
        super().__init__(model, lambda m, inputs: predict_outputs(m, inputs, self.modes, post_process))

    def __call__(self, sample: dict) -> dict:
        inputs = {k: np.asarray(sample[k])[None] for k in ("color_s", "color_o", "direct")}
        return {k: v[0] for k, v in jax.device_get(super().__call__(inputs)).items()}


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------

def default_crop(dataset: str) -> str:
    """The crop a dataset (a TFDS name, e.g. kitti_eigen_test/raw) is scored in by default: `DEFAULT_CROPS`."""
    return DEFAULT_CROPS.get(dataset.split("/")[0], "none")


def record_name(record: dict, index: int) -> str:
    name = record.get("name", str(index))
    return name.decode() if isinstance(name, bytes) else str(name)


def disparity_gt(record: dict) -> np.ndarray:
    """The GT disparity (H, W) float32 in GT pixels of a record with depth_gt: its disp_gt (kitti_stereo2015),
    or else K[0, 0] * baseline / depth_gt with K (stored at the image size) rescaled to the GT width, 0 where
    depth_gt is invalid."""
    if "disp_gt" in record:
        return np.asarray(record["disp_gt"], np.float32)
    depth = np.asarray(record["depth_gt"], np.float32)
    focal = float(np.asarray(record["K"])[0, 0]) * depth.shape[1] / np.shape(record["image_s"])[1]
    return disparity_from_depth(depth, focal * float(record["baseline"]))


# ---------------------------------------------------------------------------------------------------
# The evaluation loop
# ---------------------------------------------------------------------------------------------------

def evaluate(evaluator: Evaluator, source, *, image_size, opts: MetricOptions, max_samples: int | None = None,
             out_dir=None, predictions_dir=None, desc: str = "eval") -> dict:
    """Score the first ``max_samples`` records of ``source`` (all for None) with every path of ``evaluator``.

    Each record's ground truth is its depth_gt and `disparity_gt`. Writes ``<out_dir>/per_image.jsonl`` when
    out_dir is given, and ``<predictions_dir>/<index:05d>_<mode>.npz`` (depth, disp, depth_gt, disp_gt at the
    GT resolution) when predictions_dir is. Returns {'results': {mode: mean metrics (plus scale_std with
    median scaling)}, 'num_samples', 'seconds', 'seconds_per_sample' (excluding the first sample, which
    compiles)}.
    """
    n = len(source) if max_samples is None else min(max_samples, len(source))
    if n == 0:
        raise InputError("the dataset split has no samples")
    per_mode: dict = {m: [] for m in evaluator.modes}
    log = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log = (Path(out_dir) / "per_image.jsonl").open("w")
    if predictions_dir is not None:
        Path(predictions_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    after_first = start
    try:
        for i in tqdm(range(n), desc=desc, unit="img"):
            record = source[i]
            name = record_name(record, i)
            if "depth_gt" not in record:
                raise InputError(f"sample {name!r} has no depth_gt: not an evaluation set")
            sample = {**eval_sample(record, full_size=image_size), "disp_gt": disparity_gt(record)}
            outputs = evaluator(sample)
            for mode in evaluator.modes:
                pred = prediction_at_gt(outputs, mode, sample["depth_gt"].shape)
                try:
                    m = score(pred, sample, opts)
                except ValueError as e:
                    raise InputError(f"sample {i} ({name}): {e}") from e
                per_mode[mode].append(m)
                if log:
                    log.write(json.dumps({"index": i, "name": name, "mode": mode, **m}) + "\n")
                if predictions_dir is not None:
                    np.savez_compressed(Path(predictions_dir) / f"{i:05d}_{mode}.npz", **pred,
                                        depth_gt=sample["depth_gt"], disp_gt=sample["disp_gt"])
            if i == 0:
                after_first = time.perf_counter()
    finally:
        if log:
            log.close()
    end = time.perf_counter()
    results = {}
    for mode, ms in per_mode.items():
        results[mode] = mean_metrics(ms)
        if opts.scaled:
            results[mode]["scale_std"] = float(np.std([m["scale"] for m in ms]))
    return {"results": results, "num_samples": n, "seconds": end - start,
            "seconds_per_sample": (end - after_first) / (n - 1) if n > 1 else end - start}


def format_table(results: dict) -> str:
    """One row per path, one column per metric of `COLUMNS` that any path has (blank where a path lacks it)."""
    names = [n for n in COLUMNS if any(n in m for m in results.values())]
    header = "mode".ljust(8) + "".join(n.rjust(10) for n in names)
    rows = [mode.ljust(8) + "".join(f"{m[n]:10.3f}" if n in m else " " * 10 for n in names)
            for mode, m in results.items()]
    return "\n".join([header] + rows)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (its val section gives the defaults)")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="converted model checkpoint, or a training run's workdir / checkpoint dir / step dir")
    parser.add_argument("--which", default="latest", type=parse_which,
                        help="checkpoint of a training run: latest (default), best, or a step number")
    parser.add_argument("--dataset", help="TFDS name (default val.name)")
    parser.add_argument("--data-dir", help="TFDS data directory (default val.data_dir)")
    parser.add_argument("--split", help="dataset split (default val.split; see above for --dataset)")
    parser.add_argument("--modes", nargs="+", help="paths: Mono Stereo Refine (default val.modes)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="network input size (default: see above)")
    parser.add_argument("--metric", help=f"one of {', '.join(METRICS)} (default val.metric)")
    parser.add_argument("--crop", help=f"one of {', '.join(CROPS)} (default garg on kitti_eigen_test, else none)")
    parser.add_argument("--min-depth", type=float, help="mask / clamp lower bound (default val.min_depth)")
    parser.add_argument("--median-scaling", action="store_true", help="median-scale each prediction")
    parser.add_argument("--post-process", default="none", help=f"one of {', '.join(POST_PROCESS)}")
    parser.add_argument("--max-samples", type=int, help="evaluate the first N samples (default val.max_samples)")
    parser.add_argument("--out", type=Path, default=Path("eval_res"), help="output folder (default eval_res)")
    parser.add_argument("--save-predictions", action="store_true",
                        help=f"write <out>/{PREDICTIONS}/<index:05d>_<mode>.npz (see above)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. val.max_samples=10")
    argv = sys.argv[1:] if argv is None else list(argv)
    return split_overrides(parser.parse_intermixed_args(argv), argv)


def split_overrides(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Move the key=value words --modes took (nargs='+' takes every word up to the next option) to the
    overrides, all in command-line order."""
    taken = [m for m in args.modes or () if "=" in m]
    if taken:
        args.modes = [m for m in args.modes if "=" not in m]
        if not args.modes:
            raise InputError(f"--modes names no path before {taken[0]}; paths are {', '.join(PATHS)}")
        args.overrides = sorted(args.overrides + taken, key=argv.index)
    return args


def resolve_settings(args: argparse.Namespace, cfg: TrainConfig) -> dict:
    """The evaluation settings from the command line and the config's val section (all but the input size,
    `input_size`); InputError if invalid."""
    val = cfg.val
    modes = tuple(args.modes or val.modes)
    unknown = [m for m in modes if m not in PATHS]
    if unknown:
        raise InputError(f"unknown mode(s) {', '.join(unknown)}; modes are {', '.join(PATHS)}")
    modes = tuple(m for m in PATHS if m in modes)
    if args.post_process not in POST_PROCESS:
        raise InputError(f"unknown --post-process {args.post_process!r}; known: {', '.join(POST_PROCESS)}")
    if args.post_process != "none" and not any(m in POST_PROCESSED_MODES for m in modes):
        raise InputError(f"--post-process {args.post_process} applies to the Mono and Refine paths only; "
                         f"--modes {' '.join(modes)} has neither")
    name, data_dir = cfg.val_dataset
    dataset = args.dataset or name
    if dataset == "synthetic":
        raise InputError("the config validates on the 'synthetic' scenes, which have no evaluation set; pass "
                         "--dataset (e.g. kitti_eigen_test/raw, kitti_stereo2015)")
    data_dir = args.data_dir or data_dir
    if data_dir is None:
        raise InputError("no data directory: pass --data-dir or set val.data_dir (or data.data_dir) to the "
                         "directory `python -m tiodepth_jax.data.build` wrote the dataset to")
    base = dataset.split("/")[0]
    if args.dataset is None:  # the config's validation set: its split and metric
        split, metric = val.split, val.metric
    else:
        split = DEFAULT_SPLITS.get(base, "test")
        metric = "depth_kitti_stereo2015" if base == "kitti_stereo2015" else "depth_kitti"
    max_samples = args.max_samples if args.max_samples is not None else val.max_samples
    if max_samples is not None and max_samples < 1:
        raise InputError(f"--max-samples must be >= 1, got {max_samples}")
    try:
        opts = MetricOptions(metric=args.metric or metric, max_depth=val.max_depth,
                             median_scaling=args.median_scaling, crop=args.crop or default_crop(dataset),
                             min_depth=val.min_depth if args.min_depth is None else args.min_depth)
    except ValueError as e:
        raise InputError(str(e)) from None
    return {"dataset": dataset, "split": args.split or split, "data_dir": data_dir, "modes": modes,
            "post_process": args.post_process, "max_samples": max_samples, "opts": opts}


def input_size(args: argparse.Namespace, cfg: TrainConfig, model_size) -> tuple[tuple[int, int], str]:
    """The network input size and where it comes from: --size, else val.image_size given as an argument, else
    the checkpoint's own (``model_size``, `checkpoint.Loaded.image_size`; None for a converted model), else
    the config's val.image_size. InputError if --size is not two multiples of the patch or the size does not
    fit mspp."""
    if args.size:
        size, origin = tuple(args.size), "--size"
        if any(s <= 0 or s % PATCH for s in size):
            raise InputError(f"--size {size[0]} {size[1]}: the input size must be two positive multiples of {PATCH}")
    elif any(parse_override(o)[0] == ("val", "image_size") for o in args.overrides):
        size, origin = tuple(cfg.val.image_size), "val.image_size argument"
    elif model_size is not None:
        size, origin = tuple(model_size), "checkpoint"
    else:
        size, origin = tuple(cfg.val.image_size), "config"
    if args.post_process == "mspp":
        small = postprocess.mspp_size(*size)
        if any(s % PATCH for s in small):
            raise InputError(f"mspp runs the second pass at 2/3 of the input size {list(size)} ({origin}), i.e. "
                             f"{list(small)}, which is not a multiple of {PATCH}; choose another --size")
    return size, origin


def run(args: argparse.Namespace) -> dict:
    """The evaluation the command line asks for; returns the summary it writes to ``<out>/summary.json``."""
    cfg = load_config(args.config, args.overrides)
    settings = resolve_settings(args, cfg)
    source = open_source(settings["dataset"], settings["data_dir"], settings["split"])
    loaded = load(args.checkpoint, kind="tiodepth", which=args.which)
    image_size, size_origin = input_size(args, cfg, loaded.image_size)
    opts, modes, method = settings["opts"], settings["modes"], settings["post_process"]
    pp_modes = [m for m in modes if m in POST_PROCESSED_MODES] if method != "none" else []
    predictions = args.out / PREDICTIONS if args.save_predictions else None
    print(f"{settings['dataset']} [{settings['split']}]: {len(source)} samples, input size "
          f"{image_size[0]}x{image_size[1]} ({size_origin}), modes {' '.join(modes)}, {opts.metric}, crop "
          f"{opts.crop}, min_depth {opts.min_depth}, median scaling {'on' if opts.scaled else 'off'}, "
          f"post-processing {method}" + (f" ({' '.join(pp_modes)})" if pp_modes else "")
          + f", on {jax.default_backend()} ({jax.devices()[0].device_kind})")
    evaluator = Evaluator(loaded.model, modes, method)
    result = evaluate(evaluator, source, image_size=image_size, opts=opts, max_samples=settings["max_samples"],
                      out_dir=args.out, predictions_dir=predictions)
    summary = {**loaded.source, "dataset": settings["dataset"], "split": settings["split"],
               "data_dir": str(settings["data_dir"]), "image_size": list(image_size), "image_size_from": size_origin,
               "modes": list(modes), **dataclasses.asdict(opts), "median_scaled": opts.scaled,
               "post_process": method, "post_processed_modes": pp_modes, "compiled_shapes": evaluator.num_traces,
               "out": str(args.out), "predictions": None if predictions is None else str(predictions), **result}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    return run_command(lambda: show(run(parse_args(argv))))


def show(summary: dict) -> None:
    """The summary table and timings on the console."""
    print(format_table(summary["results"]))
    if summary["median_scaled"]:
        print("std of scale: " + ", ".join(f"{m} {r['scale_std']:.3f}" for m, r in summary["results"].items()))
    print(f"{summary['num_samples']} samples in {summary['seconds']:.1f} s "
          f"({summary['seconds_per_sample'] * 1000:.0f} ms per sample after the first); wrote {summary['out']}")


if __name__ == "__main__":
    sys.exit(main())
