"""Host memory policy the project sets by default (glibc only): freed memory stays in the process for reuse.

XLA:CPU allocates the buffers of every execution afresh and frees them when it ends. With glibc's defaults the
worker threads allocate from per-thread arenas, whose large blocks are mapped and unmapped with every execution,
so each execution touches gigabytes of fresh pages again: ``benchmarks.bench_train --epochs 1`` (252x840,
compile and 7 steps) took 5.8 million page faults and 15.5 s of system time. With one arena (``M_ARENA_MAX``),
no separate mappings (``M_MMAP_MAX``) and no trimming (``M_TRIM_THRESHOLD``), the next execution reuses the
freed blocks: 0.94 million faults, 6.6 s, and a median step of 6.5-7.0 s instead of 7.4 s. The process keeps its
peak host memory until it exits, which a training or inference process does anyway.

The policy is set when ``tiodepth_jax`` is imported, before JAX starts its threads. It is left alone where the
user chose an allocator policy: ``GLIBC_TUNABLES`` naming a ``glibc.malloc`` tunable, or
``TIODEPTH_MALLOC=system``. It does nothing on other C libraries and platforms.
"""

import ctypes
import os
import sys

ENV = "TIODEPTH_MALLOC"
CHOICES = ("keep", "system")
# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
POLICY = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: SIZE_MAX, never trim


def wanted(environ=os.environ) -> bool:
    """Whether the project's policy applies: not opted out, and no glibc malloc tunable set by the user."""
    choice = environ.get(ENV, "keep")
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice == "keep" and "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")


def apply_policy() -> bool:
    """Set the policy with glibc's ``mallopt``; True if it was set."""
    if not sys.platform.startswith("linux") or not wanted():
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # another C library (musl: mallopt is a no-op)
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in POLICY)
