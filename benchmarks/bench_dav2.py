"""Time jitted Depth-Anything-V2 inference with random weights (not a test).

Usage:
  python -m benchmarks.bench_dav2 [--variants vits vitb] [--size 518 [W]] [--batch 1]
                                 [--dtype float32 bfloat16] [--iters 10] [--warmup 2] [--depth N] [--json FILE]

One line per (variant, dtype), the workload `dav2_forward`: trace + compile time (ahead of time,
`lower(...).compile()`, which fills the cache the calls then use), then median and mean ms per batch,
images/s (batch / median) and, on GPUs, the process's peak device memory, over `--iters` timed calls after
`--warmup` untimed ones; `--json` appends the records (benchmarks/report.py). The forward is the one
`tiodepth_jax.predict` runs (model split once, one jitted function); inputs are (batch, H, W, 3) normal noise,
and each call is synchronised with `jax.block_until_ready`. `--depth` keeps only that many DINOv2 blocks
(smoke runs).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import harness
from tiodepth_jax.models.depth_anything_v2 import VARIANTS, DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.predict import DTYPES, DepthPredictor


def bench(variant: str, dtype_name: str, *, size: tuple[int, int], batch: int, iters: int, warmup: int,
          depth: int | None = None) -> dict:
    """Build one random-weight model and time its jitted forward on a (batch, H, W, 3) input: its record."""
    cfg = DepthAnythingV2Config.preset(variant, depth=depth, taps=harness.reduced_taps(variant, depth))
    predictor = DepthPredictor(DepthAnythingV2(cfg, dtype=DTYPES[dtype_name], rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (batch, *size, 3), jnp.float32)
    compile_s, times = harness.time_forward(predictor, x, iters=iters, warmup=warmup)
    return harness.jax_record("dav2_forward", times, compile_s=compile_s, variant=variant, depth=depth, batch=batch,
                              size=size, dtype=dtype_name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["vits", "vitb"])
    parser.add_argument("--size", type=int, nargs="+", default=[518], metavar="SIDE",
                        help="input side, or height and width; multiples of 14")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), default=["float32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    size = tuple(args.size * 2 if len(args.size) == 1 else args.size)
    if len(size) != 2 or any(s < 14 or s % 14 for s in size):
        parser.error(f"--size must be one or two positive multiples of 14, got {args.size}")
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"(x{jax.device_count()}), input {args.batch}x{size[0]}x{size[1]}", flush=True)
    for variant in args.variants:
        for dtype_name in args.dtype:
            harness.emit(bench(variant, dtype_name, size=size, batch=args.batch, iters=args.iters,
                               warmup=args.warmup, depth=args.depth), args.json)


if __name__ == "__main__":
    main()
