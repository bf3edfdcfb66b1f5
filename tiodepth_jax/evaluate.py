"""Evaluate a TiO-Depth checkpoint on a KITTI evaluation set: depth metrics per path (spec §8).

Usage:
  python -m tiodepth_jax.evaluate --config configs/X.yaml --checkpoint PATH [--which latest|best|STEP]
      [--dataset NAME] [--data-dir DIR] [--split S] [--modes Mono Stereo Refine]
      [--metric depth_kitti|depth_kitti_mono|depth_kitti_stereo2015] [--min-depth D] [--median-scaling]
      [--post-process none|fpp|gpp|mspp] [--max-samples N] [--out DIR] [key=value ...]

  --config       the run's YAML config; its `val` section gives the defaults: val.name, val.data_dir,
                 val.split (dataset), val.image_size (network input size), val.modes, val.metric,
                 val.min_depth, val.max_depth, val.max_samples. `key.sub=value` arguments override config
                 entries (e.g. val.image_size=[252,840]), anywhere on the command line, also right after --modes.
  --checkpoint   a converted model checkpoint (a directory with model.json, `tiodepth_jax.checkpoint`), or
                 a training run's checkpoints: the run's workdir, its checkpoint directory (the newest step
                 is used, or the one --which names) or one step directory of it (<dir>/<step>). The model
                 config and compute dtype are the checkpoint's own (model.json, or the resolved config
                 stored with the training checkpoints); `tiodepth_jax.checkpoint.load` reads them.
  --which        a training run's checkpoint: latest (default), best (the best validation score) or a step
  --dataset      TFDS dataset name (`tfds.data_source`), e.g. kitti_eigen_test/raw, kitti_eigen_test/improved,
                 kitti_stereo2015 (default val.name, or data.name)
  --data-dir     TFDS data directory holding the built dataset (default val.data_dir, or data.data_dir);
                 build it with `python -m tiodepth_jax.data.build`
  --split        dataset split (default val.split; for an explicit --dataset: train for kitti_stereo2015,
                 test otherwise)
  --modes        paths to evaluate, run in the order Mono, Stereo, Refine (default val.modes)
  --metric       depth_kitti: Eigen/Garg crop, GT > min_depth, GT clamped to [min_depth, max_depth];
                 depth_kitti_mono: the same with median scaling; depth_kitti_stereo2015: min_depth < GT <
                 max_depth, no crop, plus EPE-all / D1-all of the path's disparity. Default val.metric; for an
                 explicit --dataset depth_kitti_stereo2015 on kitti_stereo2015 and depth_kitti otherwise
  --min-depth    lower depth bound of the mask and the clamps (default val.min_depth: 0.5 as in the fork;
                 the original used 0)
  --median-scaling  scale each prediction by median(GT) / median(pred) (implied by depth_kitti_mono)
  --post-process Mono/Refine only (spec §8.3, tiodepth_jax.postprocess): fpp (flip, the README's "pp"),
                 gpp (Monodepth), mspp (FAL-Net; 2/3 of the input size must be multiples of 14). Stereo
                 results are never post-processed, and EPE/D1 use the raw disparity, as in the original.
  --max-samples  evaluate only the first N samples (default val.max_samples, None = all)
  --out          output folder (default eval_res): per_image.jsonl (one line per sample and path: index,
                 name, mode and each metric) and summary.json (settings, per-path means, timings)

Per sample: `augment.eval_sample` (PIL Lanczos resize of both views to val.image_size), one jitted forward
(one compile per input shape) that runs the paths and the post-processing pass, then `evaluate_prediction`:
each path's depth resized bilinearly (align_corners=False) to the GT size and scored with
`metrics.depth_metrics`; for depth_kitti_stereo2015 also its bin-unit disparity, resized and multiplied by
W_gt / W_pred, scored with `metrics.disparity_metrics`. Metrics are averaged over samples. A summary table
(one row per path: the 7 depth metrics, scale, then EPE/D1 where computed) is printed at the end.
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
from tiodepth_jax.config import PATCH, TrainConfig, load_config
from tiodepth_jax.data.augment import eval_sample
from tiodepth_jax.data.pipeline import open_source
from tiodepth_jax.errors import InputError, run_command
from tiodepth_jax.inference import DEPTH_KEYS, DISP_KEYS, POST_PROCESSED_MODES, Jitted, predict_outputs
from tiodepth_jax.metrics import (DEPTH_METRICS, depth_metrics, disparity_metrics, mean_metrics,
                                  resize_disparity_to_gt, resize_to_gt)
from tiodepth_jax.models.tiodepth import PATHS, TiODepth

METRICS = ("depth_kitti", "depth_kitti_mono", "depth_kitti_stereo2015")
POST_PROCESS = ("none",) + postprocess.METHODS
DEFAULT_SPLITS = {"kitti_stereo2015": "train"}  # split of an explicit --dataset; others: "test"
DISPARITY_METRICS = ("epe_all", "d1_all")


# ---------------------------------------------------------------------------------------------------
# Metrics of one sample
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MetricOptions:
    """How a prediction is scored (spec §8.1, §8.2).

    metric: 'depth_kitti' (Eigen crop), 'depth_kitti_mono' (Eigen crop, median scaling) or
    'depth_kitti_stereo2015' (min_depth < GT < max_depth, no crop; also EPE/D1 of the disparity).
    """

    metric: str = "depth_kitti"
    min_depth: float = 0.5
    max_depth: float = 80.0
    median_scaling: bool = False

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"needs 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    @property
    def mask_mode(self) -> str:
        return "stereo2015" if self.metric == "depth_kitti_stereo2015" else "eigen"

    @property
    def scaled(self) -> bool:
        """Median scaling: asked for, or implied by a '*_mono' metric."""
        return self.median_scaling or self.metric.endswith("_mono")

    @property
    def disparity(self) -> bool:
        """Whether EPE-all / D1-all are computed (needs the sample's disp_gt)."""
        return self.metric == "depth_kitti_stereo2015"

    @property
    def names(self) -> tuple[str, ...]:
        """The metric names of one path's result, in table order."""
        return DEPTH_METRICS + ("scale",) + (DISPARITY_METRICS if self.disparity else ())


def _map(x) -> np.ndarray:
    """One map as (h, w): accepts (h, w), (h, w, 1) or (1, h, w, 1)."""
    x = np.asarray(x)
    return x.reshape(x.shape[-3:-1]) if x.ndim > 2 else x


def evaluate_prediction(outputs: dict, sample: dict, modes, opts: MetricOptions) -> dict[str, dict[str, float]]:
    """Metrics of one sample for each path in ``modes``.

    outputs: the network's outputs for this sample (names of `TiODepth`, e.g. 'refmono_depth_0_s', and for
    the stereo2015 metric 'refmono_disp_0_s' in bin units at the network resolution), each (h, w), (h, w, 1)
    or (1, h, w, 1). sample: 'depth_gt' (H, W) in metres (0 = invalid) and, for the stereo2015 metric,
    'disp_gt' (H, W) in GT pixels (0 = invalid). Depth is resized to the GT size (bilinear, align_corners
    False) and scored with `metrics.depth_metrics`; the disparity is resized and multiplied by W_gt / w
    (`metrics.resize_disparity_to_gt`) and scored with `metrics.disparity_metrics`.

    Returns {mode: {metric: value}} with the names of ``opts.names``.
    """
    gt = np.asarray(sample["depth_gt"], np.float32)
    result = {}
    for mode in modes:
        pred = resize_to_gt(_map(outputs[DEPTH_KEYS[mode]]), gt.shape)
        m = depth_metrics(pred, gt, min_depth=opts.min_depth, max_depth=opts.max_depth, mask_mode=opts.mask_mode,
                          median_scaling=opts.scaled)
        if opts.disparity:
            disp_gt = np.asarray(sample["disp_gt"], np.float32)
            m.update(disparity_metrics(resize_disparity_to_gt(_map(outputs[DISP_KEYS[mode]]), disp_gt.shape),
                                       disp_gt))
        result[mode] = m
    return result


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

def record_name(record: dict, index: int) -> str:
    name = record.get("name", str(index))
    return name.decode() if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------------------------------------------
# The evaluation loop
# ---------------------------------------------------------------------------------------------------

def evaluate(evaluator: Evaluator, source, *, image_size, opts: MetricOptions, max_samples: int | None = None,
             out_dir=None, desc: str = "eval") -> dict:
    """Score the first ``max_samples`` records of ``source`` (all for None) with every path of ``evaluator``.

    Writes ``<out_dir>/per_image.jsonl`` when out_dir is given. Returns {'results': {mode: mean metrics
    (plus scale_std with median scaling)}, 'num_samples', 'seconds', 'seconds_per_sample' (excluding the
    first sample, which compiles)}.
    """
    n = len(source) if max_samples is None else min(max_samples, len(source))
    if n == 0:
        raise InputError("the dataset split has no samples")
    per_mode: dict = {m: [] for m in evaluator.modes}
    log = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log = (Path(out_dir) / "per_image.jsonl").open("w")
    start = time.perf_counter()
    after_first = start
    try:
        for i in tqdm(range(n), desc=desc, unit="img"):
            record = source[i]
            name = record_name(record, i)
            _check_record(record, name, opts)
            sample = eval_sample(record, full_size=image_size)
            try:
                metrics = evaluate_prediction(evaluator(sample), sample, evaluator.modes, opts)
            except InputError as e:
                raise InputError(f"sample {i} ({name}): {e}") from e
            for mode, m in metrics.items():
                per_mode[mode].append(m)
                if log:
                    log.write(json.dumps({"index": i, "name": name, "mode": mode, **m}) + "\n")
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


def _check_record(record: dict, name: str, opts: MetricOptions) -> None:
    for key, needed in (("depth_gt", True), ("disp_gt", opts.disparity)):
        if needed and key not in record:
            raise InputError(f"sample {name!r} has no {key}: "
                             + ("not an evaluation set" if key == "depth_gt" else
                                f"metric {opts.metric} needs the ground-truth disparity of kitti_stereo2015"))


def format_table(results: dict, names) -> str:
    """One row per path: the metric columns ``names`` (those a path lacks are left blank)."""
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
    parser.add_argument("--metric", help=f"one of {', '.join(METRICS)} (default val.metric)")
    parser.add_argument("--min-depth", type=float, help="mask / clamp lower bound (default val.min_depth)")
    parser.add_argument("--median-scaling", action="store_true", help="median-scale each prediction")
    parser.add_argument("--post-process", default="none", help=f"one of {', '.join(POST_PROCESS)}")
    parser.add_argument("--max-samples", type=int, help="evaluate the first N samples (default val.max_samples)")
    parser.add_argument("--out", type=Path, default=Path("eval_res"), help="output folder (default eval_res)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. val.image_size=[252,840]")
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
    """The evaluation settings from the command line and the config's val section; InputError if invalid."""
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
    if args.post_process == "mspp":
        small = postprocess.mspp_size(*val.image_size)
        if any(s % PATCH for s in small):
            raise InputError(f"mspp runs the second pass at 2/3 of val.image_size {list(val.image_size)}, i.e. "
                             f"{list(small)}, which is not a multiple of {PATCH}; choose another val.image_size")
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
                             median_scaling=args.median_scaling,
                             min_depth=val.min_depth if args.min_depth is None else args.min_depth)
    except ValueError as e:
        raise InputError(str(e)) from None
    return {"dataset": dataset, "split": args.split or split, "data_dir": data_dir, "modes": modes,
            "post_process": args.post_process, "image_size": tuple(val.image_size), "max_samples": max_samples,
            "opts": opts}


def run(args: argparse.Namespace) -> dict:
    """The evaluation the command line asks for; returns the summary it writes to ``<out>/summary.json``."""
    settings = resolve_settings(args, load_config(args.config, args.overrides))
    source = open_source(settings["dataset"], settings["data_dir"], settings["split"])
    loaded = load(args.checkpoint, kind="tiodepth", which=args.which)
    model = loaded.model
    opts, modes, method = settings["opts"], settings["modes"], settings["post_process"]
    pp_modes = [m for m in modes if m in POST_PROCESSED_MODES] if method != "none" else []
    print(f"{settings['dataset']} [{settings['split']}]: {len(source)} samples, input size "
          f"{settings['image_size'][0]}x{settings['image_size'][1]}, modes {' '.join(modes)}, {opts.metric}, "
          f"min_depth {opts.min_depth}, median scaling {'on' if opts.scaled else 'off'}, post-processing {method}"
          + (f" ({' '.join(pp_modes)})" if pp_modes else "")
          + f", on {jax.default_backend()} ({jax.devices()[0].device_kind})")
    evaluator = Evaluator(model, modes, method)
    result = evaluate(evaluator, source, image_size=settings["image_size"], opts=opts,
                      max_samples=settings["max_samples"], out_dir=args.out)
    summary = {**loaded.source, "dataset": settings["dataset"], "split": settings["split"],
               "data_dir": str(settings["data_dir"]), "image_size": list(settings["image_size"]), "modes": list(modes),
               **dataclasses.asdict(opts), "median_scaled": opts.scaled, "post_process": method,
               "post_processed_modes": pp_modes, "compiled_shapes": evaluator.num_traces, "out": str(args.out),
               **result}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    return run_command(lambda: show(run(parse_args(argv))))


def show(summary: dict) -> None:
    """The summary table and timings on the console."""
    print(format_table(summary["results"], MetricOptions(summary["metric"]).names))
    if summary["median_scaled"]:
        print("std of scale: " + ", ".join(f"{m} {r['scale_std']:.3f}" for m, r in summary["results"].items()))
    print(f"{summary['num_samples']} samples in {summary['seconds']:.1f} s "
          f"({summary['seconds_per_sample'] * 1000:.0f} ms per sample after the first); wrote {summary['out']}")


if __name__ == "__main__":
    sys.exit(main())
