"""Time one TiO-Depth training iteration for each active-group set (epochs 1, 21, 31 of the schedule).

    python -m benchmarks.bench_train                          # DINOv2-B, 252x840, batch 1, float32
    python -m benchmarks.bench_train --batch 8 --dtype bfloat16 --iters 5

Random weights (encoder, decoder, VGG19) and a generated stereo batch at the crop size; the frozen
encoder and the three per-group Adam states of the seed config. Prints the compile time (AOT), the
median seconds per iteration, images/s and, on GPUs, the peak device memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.config import OptimConfig
from tiodepth_jax.data.synthetic import SceneConfig, make_batch
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features
from tiodepth_jax.train.optim import active_groups, lr_factors, optimizer
from tiodepth_jax.train.step import init_state, make_step


@dataclasses.dataclass
class TrainingSetup:
    """What a training step needs: the model config, the optimiser groups and their update direction, the
    training state, the VGG19 parameters, the graph definitions and a batch (arrays or, when abstract,
    `jax.ShapeDtypeStruct`s)."""

    cfg: TiODepthConfig
    groups: tuple
    tx: object
    state: dict
    vgg_params: object
    graphdef: object
    vgg_graphdef: object
    batch: dict


def training_setup(variant: str = "vitb", size=(252, 840), batch: int = 1, dtype=jnp.float32,
                   remat: bool = False, *, abstract: bool = False) -> TrainingSetup:
    """Random weights and a generated stereo batch at `size`; with `abstract`, only their shapes (no
    initialisation runs, for lowering and compiling)."""
    cfg = TiODepthConfig(variant=variant, image_size=tuple(size))
    optim = OptimConfig()
    groups, tx = optim.groups, optimizer(optim)

    def create():
        model = TiODepth(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(0))
        vgg = VGG19Features(VGG19Config(), dtype=dtype, rngs=nnx.Rngs(1))
        return init_state(model, groups, cfg.frozen, tx), nnx.split(vgg)[1]

    state, vgg_params = jax.eval_shape(create) if abstract else jax.jit(create)()
    graphdef = nnx.split(nnx.eval_shape(lambda: TiODepth(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(0))),
                         nnx.Param, nnx.BatchStat)[0]
    vgg_graphdef = nnx.graphdef(nnx.eval_shape(lambda: VGG19Features(VGG19Config(), dtype=dtype, rngs=nnx.Rngs(1))))
    scene = SceneConfig(height=size[0], width=size[1])
    arrays = make_batch(scene, list(range(batch)))
    as_input = (lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)) if abstract else jnp.asarray
    return TrainingSetup(cfg, groups, tx, state, vgg_params, graphdef, vgg_graphdef,
                         {k: as_input(v) for k, v in arrays.items()})


def training_step(setup: TrainingSetup, epoch: int):
    """(jitted step of the groups active at `epoch`, the groups' learning-rate factors, the active names)."""
    active = active_groups(setup.groups, epoch)
    step = jax.jit(make_step(setup.graphdef, setup.vgg_graphdef, setup.groups, active, TRAINING_LOSSES,
                             setup.cfg.frozen, setup.tx), donate_argnums=(0,))
    return step, lr_factors(setup.groups, epoch), active


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="vitb")
    ap.add_argument("--size", type=int, nargs=2, default=(252, 840))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--epochs", type=int, nargs="+", default=(1, 21, 31))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--remat", action="store_true")
    args = ap.parse_args(argv)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); random weights; "
          f"{args.variant} {args.size[0]}x{args.size[1]} batch {args.batch} {args.dtype}")
    setup = training_setup(args.variant, tuple(args.size), args.batch, dtype, args.remat)
    state = setup.state
    for epoch in args.epochs:
        step, factors, active = training_step(setup, epoch)
        t0 = time.perf_counter()
        compiled = step.lower(state, setup.vgg_params, setup.batch, factors).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.iters + 1):  # the first call is a warm-up
            t0 = time.perf_counter()
            state, metrics = compiled(state, setup.vgg_params, setup.batch, factors)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times[1:])
        mem = jax.devices()[0].memory_stats() or {}
        peak = f", peak {mem['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in mem else ""
        print(f"epoch {epoch:2d} groups {'+'.join(g[-1] for g in active):5s}: compile {compile_s:6.1f} s, "
              f"{med:7.3f} s/iter, {args.batch / med:7.2f} images/s{peak} (loss {float(metrics['loss']):.4f})")


if __name__ == "__main__":
    main()
