"""Parameter groups, their Adam optimisers and step schedules (spec §2.8, §6.2, §12.6).

TiO-Depth trains three parameter groups (`config.GroupConfig`), each with its own Adam and its own
MultiStep schedule:

    param_group1: BB (x1)            -> the Mono stage
    param_group2: CA (x1), DE (x0.1)  -> the Stereo stage
    param_group3: MO (x1), DE (x0.1)  -> the Refine stage

with CA = the MFM blocks, MO = the midout offsets and the midout-out head, DE = the rest of the decoder,
BB = every trainable parameter outside CA and MO (DE plus any unfrozen encoder part). DE belongs to all
three groups and gets three separate Adam updates per iteration. A parameter under a `frozen` prefix is in
no group: no optimiser state, no gradient computed.

A group's update direction is `optimizer(cfg.optim)`: optionally PyTorch's `clip_grad_norm_` over the
group's gradients, optionally PyTorch Adam's `weight_decay` (added to the gradient before the moments),
then optax's `scale_by_adam` (bias-corrected moments, eps outside the square root), which is PyTorch's
Adam update. The learning rate of each member is applied per leaf, so one Adam state per group serves
members with different rates, exactly like one torch optimiser with several param groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tiodepth_jax.config import GroupConfig, OptimConfig

Groups = tuple[tuple[str, GroupConfig], ...]  # (name, group with its lr resolved), in training order
CLIP_EPS = 1e-6                               # torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6)


def member(path: tuple) -> str:
    """'CA' | 'MO' | 'DE' for decoder variables, 'ENC' for the encoder (spec §2.8)."""
    if path[0] != "decoder":
        return "ENC"
    name = str(path[1])
    if name.startswith("mfm"):
        return "CA"
    if name.startswith("midout"):
        return "MO"
    return "DE"


def is_frozen(path: tuple, frozen: tuple[str, ...]) -> bool:
    dotted = ".".join(map(str, path))
    return any(dotted == p or dotted.startswith(p + ".") for p in frozen)


def label(path: tuple, group: GroupConfig, frozen: tuple[str, ...]) -> str | None:
    """The member of `group` that trains the parameter at `path`, or None."""
    if is_frozen(path, frozen):
        return None
    members, m = group.members, member(path)
    if m in members:
        return m
    if "BB" in members and m in ("DE", "ENC"):
        return "BB"
    return None


def group_filter(group: GroupConfig, frozen: tuple[str, ...]):
    """An nnx filter selecting the parameters `group` trains."""
    return lambda path, _: label(path, group, frozen) is not None


def lr_tree(params_g: nnx.State, group: GroupConfig, frozen: tuple[str, ...], factor):
    """Per-leaf learning rate: group lr x schedule factor x member rate (factor may be traced)."""
    rates = group.members
    return nnx.map_state(lambda path, _: group.lr * factor * rates[label(path, group, frozen)], params_g)


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: the 2-norm of the per-tensor 2-norms; every gradient is multiplied
    by min(1, max_norm / (norm + 1e-6))."""
    def update(updates, state, params=None):
        norms = jnp.stack([jnp.linalg.norm(g.ravel()) for g in jax.tree.leaves(updates)])
        coef = jnp.minimum(max_norm / (jnp.linalg.norm(norms) + CLIP_EPS), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """A group's update direction without the learning rate (see the module docstring); plain Adam, with
    its state layout, when neither clipping nor weight decay is set."""
    adam = optax.scale_by_adam(b1=optim.betas[0], b2=optim.betas[1], eps=optim.eps, eps_root=0.0)
    front = ([clip_grad_norm(optim.clip_grad_norm)] if optim.clip_grad_norm is not None else []) + \
            ([optax.add_decayed_weights(optim.weight_decay)] if optim.weight_decay else [])
    return optax.chain(*front, adam) if front else adam


def apply_update(tx, params_g, grads_g, opt_state, lrs, do_step):
    """One optimiser step of a group, skipped (parameters and state unchanged) where `do_step` is False."""
    direction, new_state = tx.update(grads_g, opt_state, params_g)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731  (lrs holds plain numbers at those paths)
    new_params = jax.tree.map(lambda p, d, lr: p.replace(p[...] - lr * d[...]), params_g, direction, lrs,
                              is_leaf=is_var)
    keep = lambda new, old: jnp.where(do_step, new, old)  # noqa: E731
    return jax.tree.map(keep, new_params, params_g), jax.tree.map(keep, new_state, opt_state)


def active_groups(groups: Groups, epoch: int) -> tuple[str, ...]:
    """Groups whose start epoch has come, in order (spec §6.3)."""
    return tuple(name for name, g in groups if g.active(epoch))


def lr_factors(groups: Groups, epoch: int) -> dict:
    """Each group's MultiStep factor for `epoch` (every scheduler ticks from epoch 1, active or not)."""
    return {name: jnp.float32(g.lr_factor(epoch)) for name, g in groups}
