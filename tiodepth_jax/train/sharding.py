"""Device mesh and shardings of the training state and batches (jax_stack.md §2).

An `AxisType.Auto` mesh with axes ('data', 'fsdp'); the batch is split over both axes (every device holds
a slice), parameters and optimiser moments are replicated, or, with fsdp > 1, split along their largest
dimension divisible by the fsdp size (big_vision's `fsdp` rule) when they are large enough to matter.
BatchNorm reductions over a sharded batch are global: XLA inserts the all-reduce.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

FSDP_MIN_SIZE = 2**16  # smaller arrays stay replicated


def make_mesh(data: int, fsdp: int, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh over `devices` (default all), data x fsdp of them (`MeshConfig.shape` resolves
    the config's -1)."""
    devices = list(devices if devices is not None else jax.devices())
    if data * fsdp != len(devices):
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not use the {len(devices)} devices")
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def leaf_spec(shape: tuple, fsdp: int) -> P:
    """Replicated, or split over 'fsdp' along the largest dimension it divides."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp == 0:
            return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
    return P()


def state_shardings(tree, mesh):
    """NamedShardings for every array leaf of a state pytree (params, statistics, optimiser states)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp)), tree)


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
