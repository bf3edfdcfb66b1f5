"""ONNX export of Depth-Anything-V2 with random weights: file size, and onnxruntime's CPU latency next to the
jitted JAX model's on the same machine (not a test).

Usage:
  python -m benchmarks.bench_export [--variant vits] [--size 518] [--batch 1] [--iters 7] [--warmup 2]
                                    [--out DIR]

The graph is what `python -m tiodepth_jax.export --format onnx` writes (float32, symbolic batch); the JAX side
is the forward `tiodepth_jax.predict` runs, jitted. Both get the same (batch, size, size, 3) input in [0, 1]
(the JAX model its ImageNet-normalised copy, as predict computes it), onnxruntime with its default session
options on the CPU provider. The timed calls alternate (onnxruntime, JAX) after `--warmup` untimed rounds, so
that load from elsewhere on the machine hits both alike; the medians of `--iters` rounds are printed, with the
conversion time, the file size and the two outputs' relative L2 difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import onnxruntime
from flax import nnx

from tiodepth_jax import export
from tiodepth_jax.models.depth_anything_v2 import VARIANTS, DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.predict import IMAGENET_MEAN, IMAGENET_STD, DepthPredictor


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(variant: str, *, size: int, batch: int, iters: int, warmup: int, out: Path) -> dict:
    """Export one random-weight model to `out`/<variant>.onnx and time both runtimes on one input."""
    model = DepthAnythingV2(DepthAnythingV2Config.preset(variant), rngs=nnx.Rngs(0))
    predictor = DepthPredictor(model)
    start = time.perf_counter()
    graph = export.inference_graph(model, predictor, (size, size), batch=None)
    path, = export.write_onnx(graph, out / f"dav2_{variant}.onnx")
    export_s = time.perf_counter() - start

    x = np.random.default_rng(0).random((batch, size, size, 3), np.float32)
    normalised = (x - IMAGENET_MEAN) / IMAGENET_STD
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor.lower(normalised).compile()
    onnx_depth, = session.run(None, {"image": x})
    jax_depth = np.asarray(predictor(normalised))
    runs = {"onnxruntime": lambda: session.run(None, {"image": x}),
            "jax": lambda: jax.block_until_ready(predictor(normalised))}
    times = {name: [] for name in runs}
    for i in range(warmup + iters):
        for name, run in runs.items():
            seconds = timed(run)
            if i >= warmup:
                times[name].append(seconds)
    rel_l2 = np.linalg.norm(onnx_depth - jax_depth) / np.linalg.norm(jax_depth)
    return {"export_s": export_s, "mib": path.stat().st_size / 2**20, "rel_l2": float(rel_l2),
            **{f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="vits")
    parser.add_argument("--size", type=int, default=518, help="input height and width, a multiple of 14")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for the .onnx file (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.size % 14:
        parser.error(f"--size must be a multiple of 14, got {args.size}")
    print(f"jax {jax.__version__}, onnxruntime {onnxruntime.__version__}, {jax.devices()[0].device_kind}, "
          f"input {args.batch}x{args.size}x{args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        r = bench(args.variant, size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup,
                  out=args.out or Path(tmp))
    print(f"{args.variant}: export {r['export_s']:.1f} s, {r['mib']:.1f} MiB; median of {args.iters}: onnxruntime "
          f"{r['onnxruntime_ms']:.1f} ms, jax {r['jax_ms']:.1f} ms; relative L2 {r['rel_l2']:.1e}")


if __name__ == "__main__":
    main()
