"""Several processes (hosts): when and how `jax.distributed.initialize` runs (jax_stack.md §2).

`mesh.distributed` true initialises with the set keys of `mesh.coordinator_address / num_processes /
process_id`, JAX detecting the others (SLURM, Open MPI, Kubernetes); 'auto' does so when one of those keys,
JAX_COORDINATOR_ADDRESS, SLURM_NTASKS > 1 or OMPI_COMM_WORLD_SIZE > 1 is set; false never does.
"""

from __future__ import annotations

import os

import jax

from tiodepth_jax.config import MeshConfig


def wanted(mesh: MeshConfig, environ=os.environ) -> bool:
    """Whether this run initialises jax.distributed."""
    if mesh.distributed != "auto":
        return bool(mesh.distributed)
    return bool(mesh.launch or environ.get("JAX_COORDINATOR_ADDRESS")
                or int(environ.get("SLURM_NTASKS", 1)) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1)


def initialize(mesh: MeshConfig) -> None:
    if wanted(mesh):
        jax.distributed.initialize(**mesh.launch)
