"""Runs that meet faults lose no work: non-finite losses, SIGTERM / SIGINT / SIGKILL and --resume, a workdir
held by another run, a truncated loss log, checkpoint saves the storage refuses.

The training runs are the tiny config of test_train.py, 2 epochs of 3 steps of the Mono stage with only its
photometric loss (one small step program, as test_multihost.py), with faults injected at chosen global steps by tests/scripts/train_faulty.py; they share JAX's persistent compilation cache. Validation and
checkpoint settings do not change the training losses, so every run is compared with one uninterrupted run
(`mono_reference`, conftest.py).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.serialization import serialization

from tests.test_multihost import MONO
from tests.test_train import REPO, TINY, run
from tiodepth_jax.errors import StorageError
from tiodepth_jax.train.checkpointing import TrainCheckpoints, storage_errno

TRAIN = ["--config", "configs/demo.yaml", *TINY, *MONO, "checkpoint.async_save=true"]


def train(workdir: Path, *args: str, faults: str | None = None, env: dict) -> tuple[int, str]:
    """(exit code, stdout + stderr) of a training run in `workdir`, with `faults` injected."""
    command = ["tests/scripts/train_faulty.py", faults] if faults else ["-m", "tiodepth_jax.train"]
    p = run([*command, *TRAIN, f"workdir={workdir}", *args], env=env)
    out, _ = p.communicate(timeout=900)
    return p.returncode, out


def losses(workdir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "losses.jsonl").read_text().splitlines()]


def steps(workdir: Path) -> list[int]:
    """The complete checkpoints of a run (orbax names them by step; unfinished ones carry a suffix)."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def errors(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("error: ")]


def assert_finite_checkpoint(workdir: Path, step: int):
    from tiodepth_jax.checkpoint import load
    params = jax.tree.leaves(load(workdir, which=step).model)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in params if jnp.issubdtype(p.dtype, jnp.floating)), step


# ----- runs in a row ----------------------------------------------------------------------------------
# Each scenario f(workdir, env, reference) below is training runs in a row, asserting as it goes. They run side
# by side in two threads, the six runs of `signals_save_and_resume_to_the_same_losses` in one and the others'
# in the other: a run is a process busy on one core (imports, tracing; its programs come from the cache that
# `mono_reference` filled). The test named after a scenario waits for it and fails as it does.


def a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoints(workdir: Path, env: dict, reference: list[dict]):
    """A NaN at step 5 (epoch 2) after a checkpoint every step, keep=1 plus the best: the run stops with one line
    naming the step, the terms and the last good checkpoint; the best (step 3, validated) and the newest finite
    (step 4) remain; --resume continues from step 4 to the uninterrupted run's losses."""
    scored = ["val.every_n_epochs=1", "val.modes=[Mono]", "checkpoint.every_n_steps=1", "checkpoint.keep=1", "checkpoint.keep_best=true"]
    code, out = train(workdir, *scored, faults="5:nan", env=env)
    assert code == 2, out[-3000:]
    [line] = errors(out)
    nonfinite = [k for k, v in losses(workdir)[4].items() if not np.isfinite(v)]  # step 5's, as logged
    assert f"error: non-finite {', '.join(nonfinite)} at step 5, epoch 2;" in line and "loss" in nonfinite, line
    assert f"the last good checkpoint is step 4 in {workdir / 'checkpoints'}" in line, line
    assert "Traceback" not in out
    assert steps(workdir) == [3, 4]
    for step in (3, 4):
        assert_finite_checkpoint(workdir, step)
    from tiodepth_jax.checkpoint import load
    assert load(workdir, which="best").source["step"] == 3  # the validated checkpoint

    code, out = train(workdir, *scored, "--resume", env=env)
    assert code == 0 and "resumed from" in out and "step 4" in out, out[-3000:]
    assert losses(workdir) == reference


def skip_nonfinite_undoes_steps_and_stops_after_n_in_a_row(workdir: Path, env: dict, reference: list[dict]):
    code, out = train(workdir, "optim.skip_nonfinite=2", "checkpoint.every_n_steps=1",
                      faults="2:nan,4:nan,5:nan", env=env)
    assert code == 2, out[-3000:]
    assert "step 2: non-finite" in out and "step undone (1 in a row, optim.skip_nonfinite=2)" in out
    [line] = errors(out)
    assert "at step 5, epoch 2 (2 steps in a row, optim.skip_nonfinite=2); nothing from it was saved" in line, line
    skipped = [e["step"] for e in losses(workdir) if e.get("skipped")]
    assert skipped == [2, 4, 5] and np.isfinite(losses(workdir)[2]["loss"])
    assert steps(workdir)[-1] == 4  # step 4 was undone, so its state (that of step 3) is finite and saved
    assert_finite_checkpoint(workdir, 4)


def stopped_at(out: str, name: str) -> int:
    match = re.search(rf"stopped by {name} after step (\d+): checkpoint step \1 is in", out)
    assert match, out[-3000:]
    return int(match.group(1))


def signals_save_and_resume_to_the_same_losses(workdir: Path, env: dict, reference: list[dict]):
    """SIGTERM at step 2 and SIGINT at the next step each finish the step, save, say so and exit 143 / 130; a
    double SIGTERM exits at once; SIGKILL loses only the unsaved steps; every --resume continues, and the
    loss sequence is bit-identical to the uninterrupted run's."""
    code, out = train(workdir, faults="2:SIGTERM", env=env)
    assert code == 143, out[-3000:]
    first = stopped_at(out, "SIGTERM")
    assert first in (2, 3) and first in steps(workdir), (first, steps(workdir))
    assert "Traceback" not in out

    code, out = train(workdir, "--resume", faults=f"{first + 1}:SIGINT", env=env)
    assert code == 130 and "KeyboardInterrupt" not in out, out[-3000:]
    second = stopped_at(out, "SIGINT")
    assert second in (first + 1, first + 2) and second in steps(workdir)

    code, out = train(workdir, "--resume", faults=f"{second + 1}:SIGTERM+SIGTERM", env=env)
    assert code == 143 and "SIGTERM again: exiting now" in out, out[-3000:]
    assert "stopped by" not in out
    assert max(steps(workdir)) == second

    code, out = train(workdir, "--resume", faults=f"{second + 2}:SIGKILL", env=env)
    assert code == -signal.SIGKILL, out[-3000:]

    code, out = train(workdir, "--resume", env=env)
    assert code == 0 and "resumed from" in out, out[-3000:]
    assert losses(workdir) == reference  # bitwise

    code, out = train(workdir, env=env)  # a finished run says so and changes nothing
    assert code == 0 and "already completed its 2 epochs" in out, out[-3000:]
    assert losses(workdir) == reference


SCENARIOS = (signals_save_and_resume_to_the_same_losses,  # first: the others take the other thread meanwhile
             a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoints,
             skip_nonfinite_undoes_steps_and_stops_after_n_in_a_row)


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory, mono_reference, compile_cache) -> dict:
    """{scenario: its future}, for the scenarios whose tests are selected."""
    selected = {item.name for item in request.session.items}
    pool = ThreadPoolExecutor(2)
    try:
        yield {f: pool.submit(f, tmp_path_factory.mktemp(f.__name__) / "run", compile_cache, mono_reference)
               for f in SCENARIOS if f"test_{f.__name__}" in selected}
    finally:
        pool.shutdown(cancel_futures=True)  # those not started when a test run stops early (-x, Ctrl-C)


def test_a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoints(scenarios):
    scenarios[a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoints].result()


def test_skip_nonfinite_undoes_steps_and_stops_after_n_in_a_row(scenarios):
    scenarios[skip_nonfinite_undoes_steps_and_stops_after_n_in_a_row].result()


def test_signals_save_and_resume_to_the_same_losses(scenarios):
    scenarios[signals_save_and_resume_to_the_same_losses].result()


def test_guard_nonfinite_returns_the_given_state():
    from tiodepth_jax.train.step import guard_nonfinite

    def step(state, vgg_params, batch, lr_factors):
        new = {"params": state["params"] * batch["x"], "batch_stats": state["batch_stats"] + 1}
        return new, {"loss": jnp.sum(new["params"])}

    state = {"params": jnp.ones(3), "batch_stats": jnp.zeros(2)}
    guarded = jax.jit(guard_nonfinite(step))
    for undo in (False, True):
        new, metrics = guarded(state, None, {"x": jnp.float32(2)}, {}, jnp.bool_(undo))
        assert bool(metrics["finite"]) and float(new["params"][0]) == 2
        new, metrics = guarded(state, None, {"x": jnp.float32(np.inf) * 0}, {}, jnp.bool_(undo))
        assert not bool(metrics["finite"])
        assert bool(jnp.all(new["params"] == 1)) == undo and float(new["batch_stats"][0]) == (0 if undo else 1)


def test_guard_nonfinite_checks_what_the_step_changed():
    """A non-finite state with a finite loss is caught and undone; a value the step passes through untouched
    (a frozen parameter) is the given array and is not read."""
    from tiodepth_jax.train.step import guard_nonfinite

    def step(state, vgg_params, batch, lr_factors):
        return {"frozen": state["frozen"], "stats": state["stats"] + batch["x"]}, {"loss": jnp.float32(1)}

    state = {"frozen": jnp.full(2, np.nan), "stats": jnp.zeros(2)}
    guarded = jax.jit(guard_nonfinite(step))
    new, metrics = guarded(state, None, {"x": jnp.float32(1)}, {}, jnp.bool_(True))
    assert bool(metrics["finite"]) and float(new["stats"][0]) == 1
    new, metrics = guarded(state, None, {"x": jnp.float32(np.inf)}, {}, jnp.bool_(True))
    assert not bool(metrics["finite"]) and float(new["stats"][0]) == 0


def test_a_held_workdir_is_refused_naming_its_holder(tmp_path, compile_cache):
    from tiodepth_jax.train.lock import WorkdirLock
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = WorkdirLock(workdir)
    lock.acquire()
    try:
        code, out = train(workdir, env=compile_cache)
    finally:
        lock.release()
    assert code == 2, out[-3000:]
    [line] = errors(out)
    assert f"is in use by the run of pid {os.getpid()} on host {socket.gethostname()}" in line, line
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # nothing written


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    """A live holder (another process) refuses the lock; once that process is killed, the lock is taken over
    with a warning naming the dead holder."""
    from tiodepth_jax.train.lock import WorkdirBusyError, WorkdirLock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from tiodepth_jax.train.lock import WorkdirLock\n"
                               f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"in use by the run of pid {holder.pid} on host "):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = WorkdirLock(tmp_path)
    with caplog.at_level("WARNING", logger="tiodepth_jax"):
        lock.acquire()
    assert f"taking over the lock of a run that ended without releasing it (pid {holder.pid} on host" in caplog.text
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""
    WorkdirLock(tmp_path).acquire()  # released: no takeover message needed


def test_a_truncated_loss_log_is_repaired(tmp_path):
    from tiodepth_jax.errors import InputError
    from tiodepth_jax.train.loop import rewind_loss_log
    log = tmp_path / "losses.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "loss": 0.3}\n{"step": 4, "lo')
    rewind_loss_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
    log.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 2, "loss": 0.4}\n')
    with pytest.raises(InputError, match=f"{log}: line 2 is not JSON"):
        rewind_loss_log(log, 2)


# ----- checkpoint saves the storage refuses ------------------------------------------------------------
# Checkpoint saves the storage refuses (disk full, permission denied): one ``error:`` line and exit code 2,
# no traceback floods, no partial directory left, the earlier checkpoint restorable.
#
# The saves run in a child (tests/scripts/storage_fault.py) on a real 1 MiB tmpfs, mounted in the child's own
# user and mount namespaces, where this machine allows it; elsewhere orbax's array writer raises the OSError.

STORAGE_SCRIPT = REPO / "tests" / "scripts" / "storage_fault.py"
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
    command = [sys.executable, str(STORAGE_SCRIPT), str(mount / "ckpt"), mode, fault]
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
