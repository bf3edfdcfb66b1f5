"""Time one TiO-Depth training iteration for each active-group set (epochs 1, 21, 31 of the schedule).

    python -m benchmarks.bench_train                          # DINOv2-B, 252x840, batch 1, float32
    python -m benchmarks.bench_train --batch 8 --dtype bfloat16 --iters 5
    python -m benchmarks.bench_train --train-encoder --remat dots_with_no_batch_dims_saveable

Random weights (encoder, decoder, VGG19) and a generated stereo batch at the crop size; the frozen encoder (or,
with --train-encoder, a trained one: only then does --remat change anything) and the three per-group Adam states
of the seed config. The iteration is the program the training loop compiles: the step of the active groups inside
`guard_nonfinite`, with `undo` an argument. Prints, per epoch (the workload `train_epoch<N>`), the compile time
(AOT), the compiled program's temporary memory, the median and mean seconds per iteration over `--iters` timed
iterations after `--warmup` untimed ones, images/s (stereo pairs: batch / median) and, on GPUs, the process's
peak device memory; `--json FILE` appends the records (benchmarks/report.py). `--depth N` keeps only N DINOv2
blocks (smoke runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from tiodepth_jax.config import OptimConfig
from tiodepth_jax.data.synthetic import SceneConfig, make_batch
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.models.dinov2 import RematPolicy
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features
from tiodepth_jax.train.optim import active_groups, lr_factors, optimizer
from tiodepth_jax.train.step import guard_nonfinite, init_state, make_step


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
                   remat=False, *, depth: int | None = None, train_encoder: bool = False,
                   abstract: bool = False) -> TrainingSetup:
    """Random weights and a generated stereo batch at `size`, the encoder cut to `depth` blocks if given and
    trained if `train_encoder`; with `abstract`, only their shapes (no initialisation runs, for lowering and
    compiling)."""
    cfg = TiODepthConfig(variant=variant, image_size=tuple(size), encoder_depth=depth,
                         encoder_taps=harness.reduced_taps(variant, depth),
                         frozen=() if train_encoder else TiODepthConfig.frozen)
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


UNDO = np.bool_(True)  # the step's `undo` argument (optim.skip_nonfinite > 0); both values run one program


def training_step(setup: TrainingSetup, epoch: int):
    """(the jitted iteration of the groups active at `epoch` as the training loop builds it, called as
    step(state, vgg_params, batch, lr_factors, undo); the groups' learning-rate factors; the active names)."""
    active = active_groups(setup.groups, epoch)
    step = jax.jit(guard_nonfinite(make_step(setup.graphdef, setup.vgg_graphdef, setup.groups, active,
                                             TRAINING_LOSSES, setup.cfg.frozen, setup.tx)), donate_argnums=(0,))
    return step, lr_factors(setup.groups, epoch), active


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
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); random weights; "
          f"{args.variant} {args.size[0]}x{args.size[1]} batch {args.batch} {args.dtype}, encoder "
          f"{'trained' if args.train_encoder else 'frozen'}, remat {args.remat}")
    setup = training_setup(args.variant, tuple(args.size), args.batch, dtype, args.remat, depth=args.depth,
                           train_encoder=args.train_encoder)
    state = setup.state
    for epoch in args.epochs:
        step, factors, active = training_step(setup, epoch)
        compiled, compile_s = harness.aot_compile(step, state, setup.vgg_params, setup.batch, factors, UNDO)
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
        metrics = None

        def call():  # one iteration; the state it donates is replaced by the one it returns
            nonlocal state, metrics
            state, metrics = compiled(state, setup.vgg_params, setup.batch, factors, UNDO)
            return state, metrics

        times = harness.time_calls(call, iters=args.iters, warmup=args.warmup)
        rec = harness.jax_record(f"train_epoch{epoch}", times, compile_s=compile_s, variant=args.variant,
                                 depth=args.depth, batch=args.batch, size=args.size, dtype=args.dtype)
        groups_used = "+".join(g[-1] for g in active)
        harness.emit(rec, args.json, f" (groups {groups_used}, temp {temp:.2f} GiB, loss {float(metrics['loss']):.4f})")


if __name__ == "__main__":
    main()
