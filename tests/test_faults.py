"""Runs that meet faults lose no work: non-finite losses, SIGTERM / SIGINT / SIGKILL and --resume, a workdir
held by another run, a truncated loss log.

The training runs are the tiny config of test_train.py, 2 epochs of 3 steps, with faults injected at chosen
global steps by tests/scripts/train_faulty.py; they share JAX's persistent compilation cache. Validation and
checkpoint settings do not change the training losses, so every run is compared with one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import REPO, TINY, run

TRAIN = ["--config", "configs/demo.yaml", *TINY, "epochs=2", "checkpoint.async_save=true"]


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache) -> list[dict]:
    """The loss sequence of the uninterrupted run (6 steps: epoch 1 Mono, epoch 2 Mono + Stereo)."""
    workdir = tmp_path_factory.mktemp("reference")
    code, out = train(workdir, env=compile_cache)
    assert code == 0, out[-3000:]
    entries = losses(workdir)
    assert [e["step"] for e in entries] == list(range(1, 7))
    return entries


def assert_finite_checkpoint(workdir: Path, step: int):
    from tiodepth_jax.checkpoint import load
    params = jax.tree.leaves(load(workdir, which=step).model)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in params if jnp.issubdtype(p.dtype, jnp.floating)), step


def test_a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoints(tmp_path, reference, compile_cache):
    """A NaN at step 5 (epoch 2) after a checkpoint every step, keep=1 plus the best: the run stops with one line
    naming the step, the terms and the last good checkpoint; the best (step 3, validated) and the newest finite
    (step 4) remain; --resume continues from step 4 to the uninterrupted run's losses."""
    workdir = tmp_path / "run"
    scored = ["val.every_n_epochs=1", "checkpoint.every_n_steps=1", "checkpoint.keep=1", "checkpoint.keep_best=true"]
    code, out = train(workdir, *scored, faults="5:nan", env=compile_cache)
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

    code, out = train(workdir, *scored, "--resume", env=compile_cache)
    assert code == 0 and "resumed from" in out and "step 4" in out, out[-3000:]
    assert losses(workdir) == reference


def test_skip_nonfinite_undoes_steps_and_stops_after_n_in_a_row(tmp_path, compile_cache):
    workdir = tmp_path / "run"
    code, out = train(workdir, "optim.skip_nonfinite=2", "checkpoint.every_n_steps=1",
                      faults="2:nan,4:nan,5:nan", env=compile_cache)
    assert code == 2, out[-3000:]
    assert "step 2: non-finite" in out and "step undone (1 in a row, optim.skip_nonfinite=2)" in out
    [line] = errors(out)
    assert "at step 5, epoch 2 (2 steps in a row, optim.skip_nonfinite=2); nothing from it was saved" in line, line
    skipped = [e["step"] for e in losses(workdir) if e.get("skipped")]
    assert skipped == [2, 4, 5] and np.isfinite(losses(workdir)[2]["loss"])
    assert steps(workdir)[-1] == 4  # step 4 was undone, so its state (that of step 3) is finite and saved
    assert_finite_checkpoint(workdir, 4)


def test_guard_nonfinite_returns_the_given_state():
    from tiodepth_jax.train.step import guard_nonfinite

    def step(state, vgg_params, batch, lr_factors):
        new = {"params": state["params"] * batch["x"], "batch_stats": state["batch_stats"] + 1}
        return new, {"loss": jnp.sum(new["params"])}

    state = {"params": jnp.ones(3), "batch_stats": jnp.zeros(2)}
    for undo in (False, True):
        guarded = jax.jit(guard_nonfinite(step, undo=undo))
        new, metrics = guarded(state, None, {"x": jnp.float32(2)}, {})
        assert bool(metrics["finite"]) and float(new["params"][0]) == 2
        new, metrics = guarded(state, None, {"x": jnp.float32(np.inf) * 0}, {})
        assert not bool(metrics["finite"])
        assert bool(jnp.all(new["params"] == 1)) == undo and float(new["batch_stats"][0]) == (0 if undo else 1)


def stopped_at(out: str, name: str) -> int:
    match = re.search(rf"stopped by {name} after step (\d+): checkpoint step \1 is in", out)
    assert match, out[-3000:]
    return int(match.group(1))


def test_signals_save_and_resume_to_the_same_losses(tmp_path, reference, compile_cache):
    """SIGTERM at step 2 and SIGINT at the next step each finish the step, save, say so and exit 143 / 130; a
    double SIGTERM exits at once; SIGKILL loses only the unsaved steps; every --resume continues, and the
    loss sequence is bit-identical to the uninterrupted run's."""
    workdir = tmp_path / "run"
    code, out = train(workdir, faults="2:SIGTERM", env=compile_cache)
    assert code == 143, out[-3000:]
    first = stopped_at(out, "SIGTERM")
    assert first in (2, 3) and first in steps(workdir), (first, steps(workdir))
    assert "Traceback" not in out

    code, out = train(workdir, "--resume", faults=f"{first + 1}:SIGINT", env=compile_cache)
    assert code == 130 and "KeyboardInterrupt" not in out, out[-3000:]
    second = stopped_at(out, "SIGINT")
    assert second in (first + 1, first + 2) and second in steps(workdir)

    code, out = train(workdir, "--resume", faults=f"{second + 1}:SIGTERM+SIGTERM", env=compile_cache)
    assert code == 143 and "SIGTERM again: exiting now" in out, out[-3000:]
    assert "stopped by" not in out
    assert max(steps(workdir)) == second

    code, out = train(workdir, "--resume", faults=f"{second + 2}:SIGKILL", env=compile_cache)
    assert code == -signal.SIGKILL, out[-3000:]

    code, out = train(workdir, "--resume", env=compile_cache)
    assert code == 0 and "resumed from" in out, out[-3000:]
    assert losses(workdir) == reference  # bitwise

    code, out = train(workdir, env=compile_cache)  # a finished run says so and changes nothing
    assert code == 0 and "already completed its 2 epochs" in out, out[-3000:]
    assert losses(workdir) == reference


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
