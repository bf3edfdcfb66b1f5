"""Several processes on one machine, launched as README "Several hosts" shows: two CPU processes train as one
process does with the same global batch, a SIGKILLed process ends the other within `mesh.peer_timeout`, the
two processes' checkpoint resumes in one process; SLURM's variables are detected; launch errors are one line."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import REPO, TINY, run

TRAIN = ["-m", "tiodepth_jax.train", "--config", "configs/demo.yaml", *TINY]
# Two epochs of the Mono stage only (group 2 would start in epoch 3) with its photometric loss only: one step
# program, compiled in half the time of the whole loss table's, which the 1-process runs share through the
# persistent compilation cache; the 2 processes use the cache too (process 0 writes it).
MONO = ["optim.param_group2={st_epoch: 3, milestones: [3]}", "epochs=2",
        "losses.param_group1={photo: {kind: photo, pred: mono_disproj_img_s_0_o, target: color_s_aug, rate: 1}}"]
PEER_TIMEOUT = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "losses.jsonl").read_text().splitlines()]


def assert_close(got: list[dict], want: list[dict], rtol: float):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for k, v in w.items():
            np.testing.assert_allclose(g[k], v, rtol=rtol, atol=1e-7, err_msg=f"step {w['step']} {k}")


def finish(p, timeout=900) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def test_two_processes_train_as_one_and_resume_in_one(tmp_path, compile_cache, mono_reference):
    env = compile_cache
    # README's one-machine recipe; process 1 is SIGKILLed in epoch 2, once epoch 1's checkpoint is written
    port, workdir = free_port(), tmp_path / "two"
    procs = [run([*TRAIN, *MONO, f"workdir={workdir}", f"mesh.coordinator_address=127.0.0.1:{port}",
                  "mesh.num_processes=2", f"mesh.process_id={i}", f"mesh.peer_timeout={PEER_TIMEOUT}"], env=env)
             for i in range(2)]
    deadline = time.time() + 900
    while time.time() < deadline and not (workdir / "checkpoints" / "3").exists() and procs[0].poll() is None:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    out, _ = procs[0].communicate(timeout=PEER_TIMEOUT + 120)
    waited = time.time() - killed
    procs[1].communicate()
    assert (workdir / "checkpoints" / "3").exists(), out[-3000:]
    assert procs[0].returncode != 0 and "another task died" in out, out[-3000:]
    assert waited < PEER_TIMEOUT + 30, f"the survivor took {waited:.0f} s to exit"

    # The reference: the same config in one process (conftest.py; its checkpoint.async_save=true does not change
    # the losses).
    reference = mono_reference
    assert [r["step"] for r in reference] == list(range(1, 7))  # 2 epochs x 3 steps of the global batch 4
    # The two processes hold samples 0, 2 and 1, 3 of each global batch: float32 sums in another order. Measured
    # over the 6 steps (2 processes, then resumed in 1): relative differences <= 9e-7.
    assert_close(losses(workdir)[:3], reference[:3], rtol=1e-5)

    out = finish(run([*TRAIN, *MONO, f"workdir={workdir}", "--resume"], env=env))  # one process
    assert "resumed from" in out and "step 3: epoch 2" in out, out[-3000:]
    assert_close(losses(workdir), reference, rtol=1e-5)


def test_slurm_variables_are_detected(tmp_path):
    """`mesh.distributed=true` under srun: JAX takes the coordinator, the count and the rank from SLURM's
    variables (set here by hand). Stopped by a batch that 2 processes cannot share, a check made after
    joining, which names the detected process count."""
    port = free_port()
    procs = [run([*TRAIN, "mesh.distributed=true", "batch_size=3", f"workdir={tmp_path}"],
                 env=dict(SLURM_JOB_ID="1", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
                          SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port)))
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
        assert p.returncode == 2 and errors == ["error: batch_size 3 is not divisible by the 2 processes"], out


def test_launch_errors_are_one_line(tmp_path):
    """No process count and no cluster to detect it; a process 0 that cannot listen on the coordinator's port;
    a process whose coordinator does not answer (join timeout shortened to 2 s)."""
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        busy, silent = taken.getsockname()[1], free_port()
        join = ("import sys; from tiodepth_jax.config import MeshConfig; from tiodepth_jax.errors import "
                "run_command; from tiodepth_jax.train import distributed as d; d.JOIN_TIMEOUT_S = 2; "
                "sys.exit(run_command(lambda: d.initialize(MeshConfig(coordinator_address=sys.argv[1], "
                "num_processes=2, process_id=int(sys.argv[2])))))")
        cases = {
            "mesh.coordinator_address=<host of process 0>:<port>, mesh.num_processes=<N> and mesh.process_id":
                [*TRAIN, "mesh.distributed=true", f"workdir={tmp_path}"],
            f"mesh.coordinator_address 127.0.0.1:{busy}: process 0 cannot listen on port {busy}":
                ["-c", join, f"127.0.0.1:{busy}", "0"],
            f"mesh.coordinator_address 127.0.0.1:{silent}: process 0 cannot be reached after 2 s":
                ["-c", join, f"127.0.0.1:{silent}", "1"],
        }
        procs = {message: run(args) for message, args in cases.items()}
        for message, p in procs.items():
            out, _ = p.communicate(timeout=300)
            errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
            assert p.returncode == 2 and len(errors) == 1 and message in errors[0], out
            assert "Traceback" not in out
    assert not tmp_path.joinpath("checkpoints").exists()


def test_launch_keys_are_checked():
    from tiodepth_jax.config import ConfigError, load_config
    for override, message in [("mesh.coordinator_address=host0", "mesh.coordinator_address: must be 'host:port'"),
                              ("mesh.peer_timeout=0", "mesh.peer_timeout: must be >= 1 second")]:
        with pytest.raises(ConfigError, match=message):
            load_config(REPO / "configs" / "demo.yaml", [override])
