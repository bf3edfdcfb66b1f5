"""Several processes (hosts): when and how `jax.distributed.initialize` runs (jax_stack.md §2).

`mesh.distributed` true initialises with the set keys of `mesh.coordinator_address / num_processes /
process_id`, JAX detecting the others (SLURM, Open MPI, Kubernetes); 'auto' does so when one of those keys,
JAX_COORDINATOR_ADDRESS, SLURM_NTASKS > 1 or OMPI_COMM_WORLD_SIZE > 1 is set; false never does.

What JAX leaves to the caller, and what `initialize` does about it:

* A coordinator that cannot be reached makes JAX's client abort the process after its join timeout (no
  exception, a message about "another task"), a coordinator port in use may crash process 0, and a process
  count that is neither set nor detected stops with JAX's "Number of processes must be defined". Each is a
  one-line `UserError` that names the address or the keys to set (the first two checked before JAX runs).
* On CPU, collectives between processes go through gloo. The first collective on a set of devices waits
  only 30 s (fixed in XLA) for every process to arrive; processes that reach it further apart fail, as when
  process 0 loads its programs from the persistent compilation cache (JAX_COMPILATION_CACHE_DIR) and the
  others compile them: only process 0 writes entries, and on CPU a program's cache key differs between
  processes, so the others never find one. One collective right after joining, while the processes are in
  step, connects them; later collectives wait for each other up to 30 minutes. With that the cache works
  with several processes: process 0 loads its programs, and waits for the others to compile theirs.
* A lost process: JAX's heartbeats declare it dead after `mesh.peer_timeout` seconds and end the others
  (their last message: "another task died"); a process that ends, normally or on an error, waits as long
  at most for the others to end too.
* SIGTERM: JAX's preemption service catches it, for `multihost_utils.reached_preemption_sync_point`, which
  the trainer does not call, so a process ignored SIGTERM. The service is turned off: SIGTERM acts as with
  one process.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import jax
from jax.experimental import multihost_utils

from tiodepth_jax.config import MeshConfig
from tiodepth_jax.errors import UserError

JOIN_TIMEOUT_S = 300  # every process must have started within this (hosts may start minutes apart)
log = logging.getLogger(__name__)


def wanted(mesh: MeshConfig, environ=os.environ) -> bool:
    """Whether this run initialises jax.distributed."""
    if mesh.distributed != "auto":
        return bool(mesh.distributed)
    return bool(mesh.launch or environ.get("JAX_COORDINATOR_ADDRESS")
                or int(environ.get("SLURM_NTASKS", 1)) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once `address` ('host:port') accepts TCP connections, or raise a `UserError` naming it after
    `timeout_s`: JAX's client, given an address nothing listens on, aborts the process instead."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"mesh.coordinator_address {address}: process 0 cannot be reached after "
                                f"{timeout_s:g} s ({e.strerror or e}); start process 0 with the same address "
                                "and check the host name and that the port is open to this host") from None
            time.sleep(0.5)


def check_port_free(address: str) -> None:
    """Raise a `UserError` naming `address` ('host:port') when its port is taken on this host: JAX's coordinator
    service, started by process 0, crashes the process (SIGSEGV) at times instead of raising when it cannot
    bind. gRPC binds with SO_REUSEPORT: without this check a second run on the port would share it."""
    port = int(address.rpartition(":")[2])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free, as for gRPC
        try:
            s.bind(("", port))
        except OSError as e:
            raise UserError(f"mesh.coordinator_address {address}: process 0 cannot listen on port {port} "
                            f"({e.strerror or e}); is another run or program using it?") from None


def initialize(mesh: MeshConfig) -> None:
    """Join the run's processes (see the module docstring) when `wanted`; a no-op otherwise."""
    if not wanted(mesh):
        return
    launch = mesh.launch
    address = launch.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    log.info(f"joining the other processes at {address or 'the coordinator JAX detects'} "
             f"(waiting up to {JOIN_TIMEOUT_S} s for all of them)")
    if address and launch.get("process_id") == 0:
        check_port_free(address)
    elif address and launch.get("process_id"):
        wait_for_coordinator(address, JOIN_TIMEOUT_S)
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(**launch, initialization_timeout=JOIN_TIMEOUT_S,
                                   heartbeat_timeout_seconds=mesh.peer_timeout,
                                   shutdown_timeout_seconds=mesh.peer_timeout)
    except ValueError as e:  # a parameter neither set nor detected
        raise UserError(f"several processes (mesh.distributed={str(mesh.distributed).lower()}): {e} JAX "
                        "detected no SLURM, Open MPI or Kubernetes job to take it from; set "
                        "mesh.coordinator_address=<host of process 0>:<port>, mesh.num_processes=<N> and "
                        "mesh.process_id=<0..N-1> on every process, or mesh.distributed=false for one "
                        "process") from None
    try:
        multihost_utils.sync_global_devices("tiodepth_jax: processes joined")
    except jax.errors.JaxRuntimeError as e:
        raise UserError(f"the {jax.process_count()} processes joined but cannot exchange data ({e}); check "
                        "that every host can open TCP connections to every other host") from None
