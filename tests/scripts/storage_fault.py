"""Save checkpoints like the trainer until the storage refuses one, through `run_command` (so a `UserError`
prints one ``error: ...`` line and sets exit code 2); then open the directory afresh, restore its latest
checkpoint and print what it found as one JSON line. Used by tests/test_faults.py.

    storage_fault.py DIRECTORY async|sync FAULT

FAULT is how the save of step 2 fails:
  full          DIRECTORY is on a filesystem with room for one checkpoint (a small tmpfs)
  readonly      DIRECTORY's filesystem is remounted read-only after step 1 (needs a mount namespace)
  ENOSPC|EACCES orbax's array writer raises that OSError (any filesystem)
"""

import errno
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.serialization import serialization

from tiodepth_jax.errors import run_command
from tiodepth_jax.train.checkpointing import TrainCheckpoints

N_ARRAYS, SIZE = 20, 8192  # 640 KiB of incompressible float32 per checkpoint, in as many writes as arrays


def state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {f"p{i}": jnp.asarray(rng.standard_normal(SIZE, dtype=np.float32)) for i in range(N_ARRAYS)}


def refuse_writes(code: int) -> None:
    """Make orbax's lowest Python-level array writer fail with `code` on every other array, the others
    writing for real: a failure amid writes in flight, as on a disk that fills up."""
    write = serialization.async_serialize_from_host
    calls = itertools.count()

    async def failing(*args, **kwargs):
        if next(calls) % 2:
            raise OSError(code, os.strerror(code))
        return await write(*args, **kwargs)

    serialization.async_serialize_from_host = failing


def inject(fault: str, directory: Path) -> None:
    """Set up `fault` once step 1 is on disk."""
    if fault == "readonly":
        subprocess.run(["mount", "-o", "remount,ro", str(directory.parent)], check=True)
    elif fault != "full":
        refuse_writes(getattr(errno, fault))


def save_until_failure(directory: Path, async_save: bool, fault: str) -> None:
    """Steps 1-3 as the trainer saves them (no try/finally: the error ends the run), the fault after step 1."""
    checkpoints = TrainCheckpoints(directory, keep=3, async_save=async_save)
    checkpoints.save(1, state(1), {"step": 1})
    checkpoints.wait()
    inject(fault, directory)
    for step in (2, 3):
        checkpoints.save(step, state(step), {"step": step})
    checkpoints.close()


def restored(directory: Path) -> dict:
    """What `directory` holds (listed first: a new manager removes temporary directories) and what a fresh
    `TrainCheckpoints` on it restores."""
    entries = sorted(p.name for p in directory.iterdir())
    checkpoints = TrainCheckpoints(directory, async_save=False)
    expected = state(1)
    values, meta = checkpoints.restore(expected)
    same = all(np.array_equal(np.asarray(values[k]), np.asarray(v)) for k, v in expected.items())
    return {"latest": checkpoints.latest_step(), "meta": meta, "same_values": same, "entries": entries}


def main() -> int:
    directory, mode, fault = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    code = run_command(lambda: save_until_failure(directory, mode == "async", fault))
    print(json.dumps(restored(directory)))
    return code


if __name__ == "__main__":
    sys.exit(main())
