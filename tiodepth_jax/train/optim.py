"""Parameter groups, their Adam optimisers and step schedules (spec §2.8, §6.2, §12.6).

TiO-Depth trains three parameter groups, each with its own Adam and its own MultiStep schedule:

    param_group1: BB (x1)            -> the Mono stage
    param_group2: CA (x1), DE (x0.1)  -> the Stereo stage
    param_group3: MO (x1), DE (x0.1)  -> the Refine stage

with CA = the MFM blocks, MO = the midout offsets and the midout-out head, DE = the rest of the decoder,
BB = every trainable parameter outside CA and MO (DE plus any unfrozen encoder part). DE belongs to all
three groups and gets three separate Adam updates per iteration. A parameter under a `frozen` prefix is in
no group: no optimiser state, no gradient computed.

Adam here is optax's `scale_by_adam` (bias-corrected moments, eps outside the square root), which is
PyTorch's Adam update; the learning rate of each member is applied per leaf, so one Adam state per group
serves members with different rates, exactly like one torch optimiser with several param groups.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

MEMBERS = ("BB", "CA", "DE", "MO")


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """One optimiser: its members with lr rates, start epoch and MultiStep schedule (per epoch, from 1)."""

    name: str
    rates: dict[str, float]
    st_epoch: int
    milestones: tuple[int, ...]
    gamma: float = 0.5
    lr: float = 1e-4

    def __post_init__(self):
        unknown = sorted(set(self.rates) - set(MEMBERS))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter set(s) {unknown}; known: {MEMBERS}")
        if "BB" in self.rates and "DE" in self.rates:
            raise ValueError(f"{self.name}: BB already contains DE; a parameter cannot be in two of its members")

    def lr_factor(self, epoch: int) -> float:
        """MultiStepLR after `epoch - 1` scheduler steps: gamma ** #(milestones <= epoch - 1)."""
        return self.gamma ** sum(m <= epoch - 1 for m in self.milestones)


def default_groups() -> tuple[GroupSpec, ...]:
    """The training yaml's groups (spec §6.2): Unified-BB*1-CA*1+DE*0.1-MO*1+DE*0.1."""
    return (GroupSpec("param_group1", {"BB": 1.0}, 1, (20, 30, 40, 45)),
            GroupSpec("param_group2", {"CA": 1.0, "DE": 0.1}, 21, (30, 40, 45)),
            GroupSpec("param_group3", {"MO": 1.0, "DE": 0.1}, 31, (40, 45)))


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


def label(path: tuple, group: GroupSpec, frozen: tuple[str, ...]) -> str | None:
    """The member of `group` that trains the parameter at `path`, or None."""
    if is_frozen(path, frozen):
        return None
    m = member(path)
    if m in group.rates:
        return m
    if "BB" in group.rates and m in ("DE", "ENC"):
        return "BB"
    return None


def group_filter(group: GroupSpec, frozen: tuple[str, ...]):
    """An nnx filter selecting the parameters `group` trains."""
    return lambda path, _: label(path, group, frozen) is not None


def lr_tree(params_g: nnx.State, group: GroupSpec, frozen: tuple[str, ...], factor):
    """Per-leaf learning rate: group lr x schedule factor x member rate (factor may be traced)."""
    return nnx.map_state(lambda path, _: group.lr * factor * group.rates[label(path, group, frozen)], params_g)


def adam(b1: float = 0.5, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """PyTorch Adam's direction (betas (0.5, 0.999) in TiO-Depth), without the learning rate."""
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=0.0)


def apply_adam(tx, params_g, grads_g, opt_state, lrs, do_step):
    """One Adam step of a group, skipped (parameters and state unchanged) where `do_step` is False."""
    direction, new_state = tx.update(grads_g, opt_state, params_g)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731  (lrs holds plain numbers at those paths)
    new_params = jax.tree.map(lambda p, d, lr: p.replace(p[...] - lr * d[...]), params_g, direction, lrs,
                              is_leaf=is_var)
    keep = lambda new, old: jnp.where(do_step, new, old)  # noqa: E731
    return jax.tree.map(keep, new_params, params_g), jax.tree.map(keep, new_state, opt_state)
