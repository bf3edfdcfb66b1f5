"""Train-state checkpoints with orbax's CheckpointManager (jax_stack.md §4).

A checkpoint holds the whole train state (parameters, BatchNorm statistics, the three Adam states) as
orbax arrays and, as JSON, where the run is: epoch, global step, data-iterator position, RNG seed and the
resolved config. Saves are asynchronous and atomic (a crash mid-save leaves the previous checkpoint);
the last N are kept, plus the best by the validation score (`checkpoint.BEST_KEY`, lower is better) when
asked. Restoring takes the shardings of the current mesh, so a checkpoint written on one mesh restores on
another. `tiodepth_jax.checkpoint.load` reads a model back from these checkpoints.

A save the storage refuses (disk full, over quota, permission denied, read-only) raises one `StorageError`
naming the step, the directory and the OS reason, after removing the partial temporary directory; the earlier
checkpoints stay as they were. An asynchronous save fails late: on the next `save`, on `wait` or on `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils
from orbax.checkpoint._src.path.atomicity_types import TMP_DIR_SUFFIX
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from tiodepth_jax.checkpoint import RUN_ITEMS, best_score
from tiodepth_jax.errors import StorageError

# the storage refusing a write, as opposed to a bug (which keeps its traceback)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                            errno.EIO})
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='(\d+)'")


def storage_errno(exc: BaseException | None) -> int | None:
    """The errno of a write the storage refused, found in `exc` or the exceptions it came from; None for any
    other failure. TensorStore, which writes the arrays, reports an OS error as a ValueError whose message
    ends in ``[os_error_code='28']``; orbax's own files (JSON, metadata) raise a plain OSError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _TENSORSTORE_ERRNO.search(str(exc))
        code = exc.errno if isinstance(exc, OSError) else int(found[1]) if found else None
        if code in STORAGE_ERRNOS:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


class _DropStorageFailures(logging.Filter):
    """Drops orbax's error logs of a write the storage refused: each failed save logs its exception with a
    traceback three or four times (the writer thread, the commit thread, every wait), and `TrainCheckpoints`
    raises that failure itself, as one `StorageError`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and storage_errno(record.exc_info[1]) is not None)


_DROP_STORAGE_FAILURES = _DropStorageFailures()


def _run_sync_and_drain(coro):
    """orbax's `asyncio_utils._run_sync_via_new_loop`, except that a failing coroutine's leftover tasks are
    awaited before the loop closes. One failed array write ends orbax's `asyncio.gather` of all of them;
    closing the loop over the others made asyncio log each as "Task exception was never retrieved" (with its
    traceback) and TensorStore's completions print "Event loop is closed" tracebacks."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        except BaseException:
            loop.run_until_complete(_settle(asyncio.all_tasks(loop)))
            raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def _settle(tasks: set[asyncio.Task], timeout_s: float = 60) -> None:
    """Let `tasks` finish and retrieve their exceptions. They are not cancelled at once: a cancelled task
    leaves its TensorStore write running, which calls back into the loop when it ends; only those still
    running after `timeout_s` are."""
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=timeout_s)
        for task in running:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


asyncio_utils._run_sync_via_new_loop = _run_sync_and_drain


class TrainCheckpoints:
    def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: bool = False, async_save: bool = True,
                 config: dict | None = None):
        self.directory = Path(directory).absolute()
        self.async_save = async_save
        self._in_flight: int | None = None     # the step an asynchronous save may still be writing
        self._failed: StorageError | None = None
        logging.getLogger("absl").addFilter(_DROP_STORAGE_FAILURES)  # orbax logs through absl
        policies = [pp.LatestN(keep)]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=best_score, reverse=True, n=1,
                                     keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            self.directory,
            # best_fn makes orbax write each checkpoint's metrics to disk (without it they live only in this
            # process, and a resumed run's BestN policy would see none)
            options=ocp.CheckpointManagerOptions(preservation_policy=pp.AnyPreservationPolicy(policies),
                                                 best_fn=best_score, best_mode="min",
                                                 enable_async_checkpointing=async_save,
                                                 # in `save` itself: a directory that cannot be created
                                                 # (read-only, no permission) then fails there, while in
                                                 # the background it would leave orbax's writer threads
                                                 # waiting 5 minutes for it, and the process with them
                                                 async_options=ocp.AsyncOptions(
                                                     create_directories_asynchronously=False),
                                                 cleanup_tmp_directories=True),
            item_names=RUN_ITEMS,
            metadata={"config": config or {}})

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Start writing `state` and `meta` (epoch, iterator position, ...) for `step` (asynchronous unless
        `async_save` is off). Raises `StorageError` if the storage refuses this save or the previous one."""
        self.wait()  # orbax waits here anyway; waiting first tells which step a failure belongs to
        # a checkpoint without the score ranks last (`best_score` +inf): kept only as one of the last N
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        with self._storage_failures(step):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), metrics=metrics)
        if self.async_save:
            self._in_flight = step

    def wait(self) -> None:
        """Block until the last save is on disk; raises its `StorageError` if the storage refused it (and
        the first `StorageError` again once one was raised: nothing more can be saved)."""
        if self._failed is not None:
            raise self._failed
        step, self._in_flight = self._in_flight, None
        if step is not None:
            with self._storage_failures(step):
                self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _storage_failures(self, step: int):
        """Turn a write the storage refused while saving `step` into a `StorageError`; other errors pass."""
        try:
            yield
        except Exception as e:
            code = storage_errno(e)
            if code is None:
                raise
            self._failed = StorageError(self._failure_message(step, code), code)
            raise self._failed from e

    def _failure_message(self, step: int, code: int) -> str:
        """Says what failed and what is left, after removing the failed step's partial directory."""
        message = (f"checkpoint step {step} could not be written to {self.directory}: "
                   f"[Errno {code}] {os.strerror(code)}")
        left = self._remove_partial(step)
        if left:
            message += f"; remove the partial {', '.join(map(str, left))} by hand"
        self.manager.reload()  # the steps on disk: orbax's list may still hold the failed one
        earlier = [s for s in self.manager.all_steps() if s != step]
        if len(earlier) > 1:
            return message + f"; the earlier checkpoints (steps {', '.join(map(str, earlier))}) are intact"
        if earlier:
            return message + f"; the earlier checkpoint (step {earlier[0]}) is intact"
        return message + "; there is no earlier checkpoint"

    def _remove_partial(self, step: int) -> list[Path]:
        """Remove the temporary directories of a failed save of `step` (process 0 owns the directory, as in
        orbax); returns those that could not be removed."""
        if jax.process_index() != 0:
            return []
        partial = list(self.directory.glob(f"{step}{TMP_DIR_SUFFIX}*"))
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return [path for path in partial if path.exists()]

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of `step` (default: the latest) onto the shardings carried by `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                      meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        """Finish the last save and release orbax's threads, also when the last save fails (its
        `StorageError` is raised) or one failed before (that error was raised then; not again)."""
        try:
            if self._failed is None:
                self.wait()
        finally:
            self.manager.close()
