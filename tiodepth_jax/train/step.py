"""One TiO-Depth training iteration as a pure function (spec §6.3).

    state = init_state(model, groups, frozen, tx)          # params, BatchNorm stats, one optimiser per group
    step = make_step(graphdef, vgg_graphdef, groups, active, loss_terms, frozen, tx)
    state, metrics = step(state, vgg_params, batch, lr_factors)   # jit it with shardings (train/sharding.py)
    step = guard_nonfinite(step)    # step(..., undo) + metrics['finite']; if undo, a non-finite step is void

The active groups run in order; group k's forward runs path k (Mono, Stereo, Refine) with the
parameters the previous group just updated, differentiates its own loss with respect to its own
parameters only (frozen ones and other groups' are constants) and steps its optimiser, unless its loss
is exactly zero. `groups` are `train.optim.Groups`, `tx` is `train.optim.optimizer(cfg.optim)`. BatchNorm running statistics are updated by every train-mode forward and threaded through.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tiodepth_jax.losses import evaluate_terms
from tiodepth_jax.models import stages
from tiodepth_jax.train.optim import Groups, apply_update, group_filter, lr_tree

STAGES = (lambda m, vgg, batch, out: stages.stage1(m, vgg, batch),
          lambda m, vgg, batch, out: stages.stage2(m, batch, out),
          lambda m, vgg, batch, out: stages.stage3(m, batch, out))


def init_state(model: nnx.Module, groups: Groups, frozen: tuple[str, ...], tx) -> dict:
    """{'params', 'batch_stats', 'opt': {group name: optimiser state of that group's parameters}}."""
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    opt = {}
    for name, g in groups:
        params_g, _ = nnx.split_state(params, group_filter(g, frozen), ...)
        opt[name] = tx.init(params_g)
    return {"params": params, "batch_stats": stats, "opt": opt}


def stage_loss(graphdef, vgg, loss_terms: dict, k: int, name: str):
    """Loss of group `name` running path k (0 Mono, 1 Stereo, 2 Refine) as a function of that group's
    parameters (argument 0): loss_fn(params_g, params_rest, stats, batch, outputs) -> (loss, (outputs,
    loss values, new BatchNorm stats))."""
    def loss_fn(params_g, params_rest, stats, batch, outputs):
        model = nnx.merge(graphdef, params_g, params_rest, stats, copy=True)
        out = STAGES[k](model, vgg, batch, outputs)
        total, values, _ = evaluate_terms(loss_terms[name], out, batch)
        return total, (out, values, nnx.state(model, nnx.BatchStat))
    return loss_fn


def make_step(graphdef, vgg_graphdef, groups: Groups, active: tuple[str, ...], loss_terms: dict,
              frozen: tuple[str, ...], tx) -> Callable:
    """The iteration for the `active` groups (names, in training order).

    step(state, vgg_params, batch, lr_factors) -> (state, metrics); the VGG19 parameters (never trained)
    are an argument so that they are not baked into the compiled program.
    """
    by_name = dict(groups)

    def step(state: dict, vgg_params, batch: dict, lr_factors: dict):
        vgg = nnx.merge(vgg_graphdef, vgg_params)
        params, stats, opt = state["params"], state["batch_stats"], dict(state["opt"])
        outputs: dict = {}
        metrics = {}
        for k, name in enumerate(active):
            group = by_name[name]
            params_g, params_rest = nnx.split_state(params, group_filter(group, frozen), ...)
            grad_fn = jax.value_and_grad(stage_loss(graphdef, vgg, loss_terms, k, name), has_aux=True)
            (loss, (outputs, values, stats)), grads = grad_fn(params_g, params_rest, stats, batch, outputs)
            lrs = lr_tree(params_g, group, frozen, lr_factors[name])
            params_g, opt[name] = apply_update(tx, params_g, grads, opt[name], lrs, loss != 0)
            params = nnx.merge_state(params_rest, params_g)
            metrics[f"{name}-loss"] = loss
            metrics.update({f"{name}/{term}": v for term, v in values.items()})
        metrics["loss"] = sum(metrics[f"{name}-loss"] for name in active)
        return {"params": params, "batch_stats": stats, "opt": opt}, metrics

    return step



def all_finite(tree) -> jax.Array:
    """True where every floating-point value of `tree` is finite (one fused reduction on the device)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def guard_nonfinite(step: Callable) -> Callable:
    """`step` with metrics['finite']: every loss and every value of the new state (parameters, BatchNorm
    statistics, optimiser moments) is finite. Where `undo` (optim.skip_nonfinite; an argument, so that both
    policies run one compiled program) is true, a step that is not finite returns the state it was given, so
    that nothing non-finite ever enters the state.

    Values the step passes through untouched (frozen parameters, the moments of groups not active yet) are the
    given state's own arrays: they are neither checked nor selected, which keeps the frozen encoder's weights
    (95M of the 129M values at epoch 31) out of every iteration and 74 kernels out of the epoch-31 program."""
    def guarded(state: dict, vgg_params, batch: dict, lr_factors: dict, undo: jax.Array):
        new, metrics = step(state, vgg_params, batch, lr_factors)
        changed = [n for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(state)) if n is not o]
        finite = all_finite((metrics, changed))
        keep_new = finite | ~undo
        new = jax.tree.map(lambda n, o: n if n is o else jnp.where(keep_new, n, o), new, state)
        return new, {**metrics, "finite": finite}
    return guarded
