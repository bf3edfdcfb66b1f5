"""Time jitted TiO-Depth inference (Mono, Stereo, Refine paths) with RANDOM weights (not a test).

Usage:
  python -m benchmarks.bench_tiodepth [--modes Mono Stereo Refine] [--size 252 840] [--batch 1]
                                      [--dtype float32 bfloat16] [--iters 10] [--warmup 2]
                                      [--variant vitb] [--depth N] [--json FILE]

The model is the fork's TiO-Depth (`TiODepthConfig`: the `--variant` encoder, vitb by default, training size
252 x 840) with random weights (nnx.Rngs(0)); timings do not depend on the weights. One line per (dtype,
mode), the workloads `tio_mono_forward`, `tio_stereo_forward`, `tio_refine_forward`: trace + compile time
(ahead of time, `lower(...).compile()`, which fills the cache the calls then use), then median and mean ms per
forward, images/s (pairs/s for Stereo; batch / median) and, on GPUs, the process's peak device memory, over
`--iters` timed calls after `--warmup` untimed ones; `--json` appends the records (benchmarks/report.py). The
forward is the one `tiodepth_jax.predict` runs (`TiODepthPredictor`: model split once, one jitted function
returning (B, H, W) depth); inputs are uniform noise in [0, 1], each call is synchronised with
`jax.block_until_ready`, and a retrace during timing is an error. Stereo runs both views through the encoder
and the mono decoder before the stereo decoder, so it costs about twice Mono. `--depth` keeps only that many
DINOv2 blocks (smoke runs).
"""

from __future__ import annotations

import argparse
import time

import jax
from flax import nnx

from benchmarks import harness
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.predict import DTYPES, TiODepthPredictor


def bench(model: TiODepth, mode: str, dtype_name: str, *, size: tuple[int, int], batch: int, iters: int,
          warmup: int) -> dict:
    """Compile and time one path's jitted forward on (batch, H, W, 3) inputs (two of them for Stereo): its
    record."""
    predictor = TiODepthPredictor(model, mode=mode)
    keys = jax.random.split(jax.random.key(0), predictor.views)
    views = [jax.random.uniform(k, (batch, *size, 3)) for k in keys]
    compile_s, times = harness.time_forward(predictor, *views, iters=iters, warmup=warmup)
    return harness.jax_record(f"tio_{mode.lower()}_forward", times, compile_s=compile_s,
                              variant=model.cfg.variant, depth=model.cfg.encoder_depth, batch=batch, size=size,
                              dtype=dtype_name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=TiODepthPredictor.modes, default=["Mono", "Stereo"])
    parser.add_argument("--size", type=int, nargs=2, default=[252, 840], metavar=("H", "W"),
                        help="input height and width, multiples of 14 (default 252 840)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), default=["float32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variant", default="vitb", help="the encoder's DINOv2 variant")
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    if any(s < 14 or s % 14 for s in args.size):
        parser.error(f"--size must be two positive multiples of 14, got {args.size}")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch and --iters must be positive, --warmup non-negative")
    size = tuple(args.size)
    cfg = TiODepthConfig(variant=args.variant, encoder_depth=args.depth,
                         encoder_taps=harness.reduced_taps(args.variant, args.depth))
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"(x{jax.device_count()}), TiO-Depth {cfg.variant} (training size {cfg.image_size[0]}x{cfg.image_size[1]}) "
          f"with RANDOM weights, input {args.batch}x{size[0]}x{size[1]}, {args.iters} timed calls after "
          f"{args.warmup} warm-up", flush=True)
    for dtype_name in args.dtype:
        start = time.perf_counter()
        model = TiODepth(cfg, dtype=DTYPES[dtype_name], rngs=nnx.Rngs(0))
        print(f"built the {dtype_name} model in {time.perf_counter() - start:.1f} s", flush=True)
        for mode in args.modes:
            harness.emit(bench(model, mode, dtype_name, size=size, batch=args.batch, iters=args.iters,
                               warmup=args.warmup), args.json)


if __name__ == "__main__":
    main()
