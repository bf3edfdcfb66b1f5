"""Time jitted Depth-Anything-V2 inference with random weights (not a test).

Usage:
  python -m benchmarks.bench_dav2 [--variants vits vitb] [--size 518] [--batch 1]
                                 [--dtype float32 bfloat16] [--iters 10] [--warmup 2]

One line per (variant, dtype): trace + compile time (ahead of time, `lower(...).compile()`, which
fills the cache the calls then use), then mean and median ms per batch and images/s over `--iters`
timed calls after `--warmup` untimed ones. The forward
is the one `tiodepth_jax.predict` runs (model split once, one jitted function); inputs are
(batch, size, size, 3) normal noise, and each call is synchronised with `jax.block_until_ready`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.models.depth_anything_v2 import VARIANTS, DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.predict import DTYPES, DepthPredictor


def bench(variant: str, dtype_name: str, *, size: int, batch: int, iters: int, warmup: int) -> dict:
    """Build one random-weight model and time its jitted forward on a (batch, size, size, 3) input."""
    model = DepthAnythingV2(DepthAnythingV2Config.preset(variant), dtype=DTYPES[dtype_name], rngs=nnx.Rngs(0))
    predictor = DepthPredictor(model)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    start = time.perf_counter()
    predictor.lower(x).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(predictor(x))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(predictor(x))
        times.append(time.perf_counter() - start)
    if predictor.num_traces != 1:
        raise RuntimeError(f"the timed calls retraced the forward ({predictor.num_traces} traces)")
    mean, median = statistics.fmean(times), statistics.median(times)
    return {"compile_s": compile_s, "mean_ms": 1e3 * mean, "median_ms": 1e3 * median,
            "images_per_s": batch / mean}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["vits", "vitb"])
    parser.add_argument("--size", type=int, default=518, help="input height and width, a multiple of 14")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), default=["float32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.size % 14:
        parser.error(f"--size must be a multiple of 14, got {args.size}")
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"(x{jax.device_count()}), input {args.batch}x{args.size}x{args.size}")
    for variant in args.variants:
        for dtype_name in args.dtype:
            r = bench(variant, dtype_name, size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup)
            print(f"{variant:5s} {dtype_name:8s} compile {r['compile_s']:6.2f} s  "
                  f"mean {r['mean_ms']:9.1f} ms  median {r['median_ms']:9.1f} ms  {r['images_per_s']:7.2f} img/s",
                  flush=True)


if __name__ == "__main__":
    main()
