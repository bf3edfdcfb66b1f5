"""Lower and compile seconds of the training steps and the inference paths (not a test).

    python -m benchmarks.bench_compile                         # every workload
    python -m benchmarks.bench_compile --workloads train-31 tio-refine

Workloads: the training step of each active-group set (train-1, train-21, train-31: epochs 1, 21, 31 of the
schedule, DINOv2-B at 252x840, batch 1, float32, built as in `bench_train`: the guarded program the training loop
compiles), Depth-Anything-V2 ViT-S at 518x518 (dav2-vits) and the TiO-Depth Mono / Stereo / Refine inference at
252x840 (tio-mono, tio-stereo, tio-refine: the forwards `predict` runs). Arguments are abstract (shapes only):
nothing is initialised or run. The parts of the epoch-31 step can be compiled alone: train-31-stage1/2/3 (the
loss and gradient of one stage, on the outputs of the stages before it) and train-31-updates (the three groups'
optimiser updates; the guard's finiteness check and selects are in train-31 only).

For each workload: `lower` = trace and lower to StableHLO (`jax.jit(f).lower(...)`), `compile` = XLA's
compilation of that module (`.compile()`), each in wall seconds and in CPU seconds of this process (all
threads), which depend less on other work on the machine. The persistent compilation cache is off, unless
`--cache DIR` names one (as the training loop's `compile_cache` does): run twice, the second run's `compile` is
the load of the stored programs. Prints the load average, a table, then one JSON line per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.bench_train import UNDO, TrainingSetup, training_setup, training_step
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.predict import DepthPredictor, TiODepthPredictor
from tiodepth_jax.train.loop import set_compile_cache
from tiodepth_jax.train.optim import active_groups, apply_update, group_filter, lr_factors, lr_tree
from tiodepth_jax.train.step import stage_loss

TRAIN_EPOCHS = (1, 21, 31)
TIO_MODES = ("Mono", "Stereo", "Refine")
WORKLOADS = (*(f"train-{e}" for e in TRAIN_EPOCHS), "dav2-vits", *(f"tio-{m.lower()}" for m in TIO_MODES))
STEP_PARTS = ("train-31-stage1", "train-31-stage2", "train-31-stage3", "train-31-updates")


def step_part_lowering(setup: TrainingSetup, part: str):
    """A function lowering one part of the epoch-31 step (see the module docstring) on abstract arguments."""
    names = active_groups(setup.groups, 31)
    groups, factors = dict(setup.groups), lr_factors(setup.groups, 31)
    params, stats, outputs = setup.state["params"], setup.state["batch_stats"], {}
    splits, stage_args = [], []
    for k, name in enumerate(names):
        params_g, params_rest = nnx.split_state(params, group_filter(groups[name], setup.cfg.frozen), ...)

        def loss(params_g, params_rest, stats, batch, outputs, vgg_params, k=k, name=name):
            vgg = nnx.merge(setup.vgg_graphdef, vgg_params)
            return stage_loss(setup.graphdef, vgg, TRAINING_LOSSES, k, name)(params_g, params_rest, stats, batch,
                                                                           outputs)

        args = (params_g, params_rest, stats, setup.batch, outputs, setup.vgg_params)
        splits.append(params_g)
        stage_args.append((loss, args))
        _, (outputs, _, stats) = jax.eval_shape(loss, *args)
    if part == "train-31-updates":
        def updates(params, grads, opt, factors):
            return [apply_update(setup.tx, params[n], grads[n], opt[n],
                                 lr_tree(params[n], groups[n], setup.cfg.frozen, factors[n]), jnp.bool_(True))
                    for n in names]
        params_by_group = dict(zip(names, splits))
        return lambda: jax.jit(updates).lower(params_by_group, params_by_group, setup.state["opt"], factors)
    loss, args = stage_args[int(part[-1]) - 1]
    return lambda: jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(*args)


def lowering(workload: str, size: tuple[int, int], dav2_size: int):
    """A function that traces and lowers `workload` on abstract arguments, returning the `jax.stages.Lowered`."""
    if workload in STEP_PARTS:
        return step_part_lowering(training_setup(size=size, abstract=True), workload)
    if workload.startswith("train-"):
        setup = training_setup(size=size, abstract=True)
        step, factors, _ = training_step(setup, int(workload.split("-")[1]))
        return lambda: step.lower(setup.state, setup.vgg_params, setup.batch, factors, UNDO)
    if workload == "dav2-vits":
        model = nnx.eval_shape(lambda: DepthAnythingV2(DepthAnythingV2Config.preset("vits"), rngs=nnx.Rngs(0)))
        predictor = DepthPredictor(model)
        image = jax.ShapeDtypeStruct((1, dav2_size, dav2_size, 3), jnp.float32)
        return lambda: predictor.lower(image)
    mode = {m.lower(): m for m in TIO_MODES}[workload.split("-")[1]]
    model = nnx.eval_shape(lambda: TiODepth(TiODepthConfig(image_size=size), rngs=nnx.Rngs(0)))
    predictor = TiODepthPredictor(model, mode=mode)
    image = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    return lambda: predictor.lower(*[image] * predictor.views)


def timed(fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(workload: str, size: tuple[int, int], dav2_size: int) -> dict:
    lower = lowering(workload, size, dav2_size)
    lowered, lower_s, lower_cpu_s = timed(lower)
    _, compile_s, compile_cpu_s = timed(lowered.compile)
    return {"workload": workload, "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
            "lower_cpu_s": round(lower_cpu_s, 2), "compile_cpu_s": round(compile_cpu_s, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS + STEP_PARTS, default=WORKLOADS)
    ap.add_argument("--size", type=int, nargs=2, default=(252, 840), metavar=("H", "W"),
                    help="training and TiO-Depth inference size (default 252 840)")
    ap.add_argument("--dav2-size", type=int, default=518)
    ap.add_argument("--cache", metavar="DIR", help="JAX's persistent compilation cache directory (default: off)")
    args = ap.parse_args(argv)
    set_compile_cache(args.cache, args.cache is not None)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    print(f"{'workload':12s} {'lower s':>8s} {'compile s':>10s} {'lower cpu-s':>12s} {'compile cpu-s':>14s}", flush=True)
    results = []
    for workload in args.workloads:
        r = measure(workload, tuple(args.size), args.dav2_size)
        results.append(r)
        print(f"{workload:12s} {r['lower_s']:8.2f} {r['compile_s']:10.2f} {r['lower_cpu_s']:12.2f} "
              f"{r['compile_cpu_s']:14.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
