"""One run per workdir: `<workdir>/run.lock`, held with flock(2) for the life of the run.

The kernel (or the NFS / Lustre lock manager) drops the lock when its process dies, so a lock left by a
killed run is recognised as stale and taken over. The file names its holder (host, pid, start time) for the
message of a second run. Releasing empties the file instead of deleting it: deleting would let a run that
opened the old file and one that creates a new file both hold "the" lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from tiodepth_jax.errors import UserError

log = logging.getLogger(__name__)
LOCK_NAME = "run.lock"


class WorkdirBusyError(UserError):
    """The workdir is held by a live run."""


def _holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return {"host": "?", "pid": "?", "since": text[:40]}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


class WorkdirLock:
    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Hold the lock, or raise WorkdirBusyError naming the live holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirBusyError(f"{self.path.parent} is in use by the run of {_describe(holder)}; wait for it "
                                   "to end or choose another workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            log.warning(f"warning: cannot lock {self.path} ({e.strerror}): this filesystem has no file locks, so "
                        "a second run on this workdir would not be detected")
        stale = _holder(fd)
        if stale:
            log.warning(f"{self.path}: taking over the lock of a run that ended without releasing it "
                        f"({_describe(stale)})")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
