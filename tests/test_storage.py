"""Checkpoint saves the storage refuses (disk full, permission denied): one ``error:`` line and exit code 2,
no traceback floods, no partial directory left, the earlier checkpoint restorable.

The saves run in a child (tests/scripts/storage_fault.py) on a real 1 MiB tmpfs, mounted in the child's own
user and mount namespaces, where this machine allows it; elsewhere orbax's array writer raises the OSError.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.serialization import serialization

from tiodepth_jax.errors import StorageError
from tiodepth_jax.train.checkpointing import TrainCheckpoints, storage_errno

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "storage_fault.py"
# the errno each fault of the script fails with
ERRNOS = {"full": errno.ENOSPC, "readonly": errno.EROFS, "ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES}
SIMULATED = {"full": "ENOSPC", "readonly": "EACCES"}  # the faults that need a tmpfs, and what stands in
CASES = [
    ("async", "full"),      # step 2 fails in the background; the save of step 3 raises it
    ("sync", "full"),       # the save of step 2 raises
    ("async", "readonly"),  # the save of step 2 raises: it creates the step directory itself
    # a write refused while others are in flight, every time (a real disk fills up at any moment): orbax
    # then closed its event loop over the running writes, which flooded stderr
    ("async", "ENOSPC"),
]


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether a child may mount a tmpfs in new user and mount namespaces (not on every CI machine)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as mount:
        probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount]
        return subprocess.run(probe, capture_output=True).returncode == 0


def fault_here(fault: str) -> str:
    """`fault`, or the OSError the writer raises instead where no tmpfs can be mounted."""
    return SIMULATED[fault] if fault in SIMULATED and not can_mount_tmpfs() else fault


def start_child(mount: Path, mode: str, fault: str) -> subprocess.Popen:
    """The script saving into `mount`/ckpt, on a 1 MiB tmpfs mounted there for 'full' and 'readonly'."""
    command = [sys.executable, str(SCRIPT), str(mount / "ckpt"), mode, fault]
    if fault in SIMULATED:
        command = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(mount),
                   *command]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    """stdout and stderr of `proc`; a child that hangs is killed."""
    try:
        return proc.communicate(timeout=120)
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def children(tmp_path_factory) -> dict:
    """(directory, process, stdout, stderr) of each case, the children run at once: each spends most of its
    time importing JAX."""
    started = {}
    for mode, fault in CASES:
        mount = tmp_path_factory.mktemp(f"{mode}-{fault}")
        started[mode, fault] = mount / "ckpt", start_child(mount, mode, fault_here(fault))
    return {case: (directory, proc, *finish(proc)) for case, (directory, proc) in started.items()}


@pytest.mark.parametrize("mode, fault", CASES)
def test_a_refused_save_is_one_error_line(children, mode, fault):
    directory, proc, stdout, stderr = children[mode, fault]
    code = ERRNOS[fault_here(fault)]
    expected = (f"error: checkpoint step 2 could not be written to {directory}: [Errno {code}] {os.strerror(code)}; "
                "the earlier checkpoint (step 1) is intact")
    assert stderr.splitlines() == [expected], stderr[-5000:]
    assert proc.returncode == 2
    # a fresh TrainCheckpoints restores step 1 as written; the partial step 2 is gone
    assert json.loads(stdout.splitlines()[-1]) == {"latest": 1, "meta": {"step": 1}, "same_values": True,
                                                   "entries": ["1", "metadata"]}


def tiny_state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {f"p{i}": jnp.asarray(rng.standard_normal(64, dtype=np.float32)) for i in range(4)}


def test_a_failed_background_save_surfaces_at_close_once(tmp_path, monkeypatch):
    checkpoints = TrainCheckpoints(tmp_path / "ckpt", async_save=True)
    checkpoints.save(1, tiny_state(1), {"step": 1})
    checkpoints.wait()

    async def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(serialization, "async_serialize_from_host", refuse)
    checkpoints.save(2, tiny_state(2), {"step": 2})  # returns: the arrays are written in the background
    with pytest.raises(StorageError, match=r"^checkpoint step 2 could not be written .*\[Errno 28\]") as failure:
        checkpoints.close()
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.ENOSPC
    checkpoints.close()  # the error was raised: closing again neither raises nor hangs
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1", "metadata"]


def test_storage_errno_tells_refused_writes_from_other_errors():
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "p0/0": Failed to write 6447104 bytes to file 4: '
                             "No space left on device [os_error_code='28']")
    assert storage_errno(tensorstore) == errno.ENOSPC
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied")
    assert storage_errno(wrapped) == errno.EACCES
    assert storage_errno(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None
    assert storage_errno(ValueError("shape mismatch")) is None
