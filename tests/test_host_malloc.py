"""The project's host memory policy: freed blocks are reused instead of unmapped, unless the user opts out."""

import os
import subprocess
import sys

import pytest

from tiodepth_jax.host_malloc import ENV, wanted

# In a fresh process: import the package, then allocate, touch and free 64 MiB from a second thread (as XLA's
# workers do) three times; print the page faults of the last round.
FAULTS = """
import ctypes, resource, threading
import tiodepth_jax
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def cycle():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = threading.Thread(target=cycle)
    t.start()
    t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env) -> int:
    environ = {k: v for k, v in os.environ.items() if k not in (ENV, "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", FAULTS], env={**environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's (Linux)")
def test_freed_blocks_are_reused_by_default_and_unmapped_when_opted_out():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept, system = _faults(), _faults(**{ENV: "system"})
    print(f"page faults of a third 64 MiB allocate-touch-free: {kept} with the policy, {system} without "
          f"({pages} pages)")
    assert kept < pages // 20 < system


def test_the_user_choice_wins():
    assert wanted({})
    assert not wanted({ENV: "system"})
    assert not wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert wanted({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    with pytest.raises(ValueError, match=f"{ENV}='fast'"):
        wanted({ENV: "fast"})
