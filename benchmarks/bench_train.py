"""Time one TiO-Depth training iteration for each active-group set (epochs 1, 21, 31 of the schedule).

    python -m benchmarks.bench_train                          # DINOv2-B, 252x840, batch 1, float32
    python -m benchmarks.bench_train --batch 8 --dtype bfloat16 --iters 5
    python -m benchmarks.bench_train --train-encoder --remat dots_with_no_batch_dims_saveable

Random weights (encoder, decoder, VGG19) and a generated stereo batch at the crop size; the frozen
encoder (or, with --train-encoder, a trained one: only then does --remat change anything) and the three
per-group Adam states of the seed config. Prints, per epoch (the workload `train_epoch<N>`), the compile time
(AOT), the compiled program's temporary memory, the median and mean seconds per iteration over `--iters` timed
iterations after `--warmup` untimed ones, images/s (stereo pairs: batch / median) and, on GPUs, the process's
peak device memory; `--json FILE` appends the records (benchmarks/report.py). `--depth N` keeps only N DINOv2
blocks (smoke runs).
"""

from __future__ import annotations

import argparse
import typing

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import harness
from tiodepth_jax.config import OptimConfig
from tiodepth_jax.data.synthetic import SceneConfig, make_batch
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.models.dinov2 import RematPolicy
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features
from tiodepth_jax.train.optim import active_groups, lr_factors, optimizer
from tiodepth_jax.train.step import init_state, make_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="vitb")
    ap.add_argument("--size", type=int, nargs=2, default=(252, 840))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--epochs", type=int, nargs="+", default=(1, 21, 31))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--remat", nargs="?", const="nothing_saveable", default=False,
                    choices=typing.get_args(RematPolicy), help="rematerialise the DINOv2 blocks with this policy")
    ap.add_argument("--train-encoder", action="store_true", help="train the encoder (model.frozen: [])")
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cfg = TiODepthConfig(variant=args.variant, image_size=tuple(args.size), encoder_depth=args.depth,
                         encoder_taps=harness.reduced_taps(args.variant, args.depth),
                         frozen=() if args.train_encoder else TiODepthConfig.frozen)
    optim = OptimConfig()
    groups, tx = optim.groups, optimizer(optim)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); random weights; "
          f"{args.variant} {args.size[0]}x{args.size[1]} batch {args.batch} {args.dtype}, encoder "
          f"{'trained' if args.train_encoder else 'frozen'}, remat {args.remat}")

    def create():
        model = TiODepth(cfg, dtype=dtype, remat=args.remat, rngs=nnx.Rngs(0))
        vgg = VGG19Features(VGG19Config(), dtype=dtype, rngs=nnx.Rngs(1))
        return init_state(model, groups, cfg.frozen, tx), nnx.split(vgg)[1]

    state, vgg_params = jax.jit(create)()
    graphdef = nnx.split(nnx.eval_shape(lambda: TiODepth(cfg, dtype=dtype, remat=args.remat, rngs=nnx.Rngs(0))),
                         nnx.Param, nnx.BatchStat)[0]
    vgg_graphdef = nnx.graphdef(nnx.eval_shape(lambda: VGG19Features(VGG19Config(), dtype=dtype, rngs=nnx.Rngs(1))))
    scene = SceneConfig(height=args.size[0], width=args.size[1])
    batch = {k: jnp.asarray(v) for k, v in make_batch(scene, list(range(args.batch))).items()}
    for epoch in args.epochs:
        active = active_groups(groups, epoch)
        step = jax.jit(make_step(graphdef, vgg_graphdef, groups, active, TRAINING_LOSSES, cfg.frozen, tx),
                       donate_argnums=(0,))
        factors = lr_factors(groups, epoch)
        compiled, compile_s = harness.aot_compile(step, state, vgg_params, batch, factors)
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
        metrics = None

        def call():  # one iteration; the state it donates is replaced by the one it returns
            nonlocal state, metrics
            state, metrics = compiled(state, vgg_params, batch, factors)
            return state, metrics

        times = harness.time_calls(call, iters=args.iters, warmup=args.warmup)
        rec = harness.jax_record(f"train_epoch{epoch}", times, compile_s=compile_s, variant=args.variant,
                                 depth=args.depth, batch=args.batch, size=args.size, dtype=args.dtype)
        groups_used = "+".join(g[-1] for g in active)
        harness.emit(rec, args.json, f" (groups {groups_used}, temp {temp:.2f} GiB, loss {float(metrics['loss']):.4f})")


if __name__ == "__main__":
    main()
