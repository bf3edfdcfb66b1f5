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
# how each fault is made: on a tmpfs of its own, else by a writer that raises the OSError
REAL = {"full": errno.ENOSPC, "readonly": errno.EROFS}
SIMULATED = {"full": "ENOSPC", "readonly": "EACCES"}


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether a child may mount a tmpfs in new user and mount namespaces (not on every CI machine)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as mount:
        probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount]
        return subprocess.run(probe, capture_output=True).returncode == 0


def run_child(tmp_path: Path, mode: str, fault: str) -> tuple[subprocess.CompletedProcess, Path, int]:
    """Run the script for `fault` ('full' or 'readonly'); returns the process, its checkpoint directory and
    the errno the save must fail with."""
    mount = tmp_path / "fs"
    mount.mkdir()
    directory = mount / "ckpt"
    command = [sys.executable, str(SCRIPT), str(directory), mode]
    if can_mount_tmpfs():
        command = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(mount),
                   *command, fault]
        code = REAL[fault]
    else:
        command.append(SIMULATED[fault])
        code = getattr(errno, SIMULATED[fault])
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env), directory, code


@pytest.mark.parametrize("mode, fault", [
    ("async", "full"),      # step 2 fails in the background; the save of step 3 raises it
    ("sync", "full"),       # the save of step 2 raises
    ("async", "readonly"),  # the save of step 2 raises: it creates the step directory itself
])
def test_a_refused_save_is_one_error_line(tmp_path, mode, fault):
    proc, directory, code = run_child(tmp_path, mode, fault)
    expected = (f"error: checkpoint step 2 could not be written to {directory}: [Errno {code}] {os.strerror(code)}; "
                "the earlier checkpoint (step 1) is intact")
    assert proc.stderr.splitlines() == [expected], proc.stderr[-5000:]
    assert proc.returncode == 2
    # a fresh TrainCheckpoints restores step 1 as written; the partial step 2 is gone
    assert json.loads(proc.stdout.splitlines()[-1]) == {"latest": 1, "meta": {"step": 1}, "same_values": True,
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
