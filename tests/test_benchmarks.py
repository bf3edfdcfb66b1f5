"""The GPU benchmark suite: its --smoke run on the CPU beside a stand-in PyTorch reference (records, pairing,
ratios), the table of saved records, failed and timed-out runs, and the check for missing requirements."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from benchmarks import gpu_suite, report, wheels

REPO = Path(__file__).resolve().parents[1]
FAKE_REFERENCE = REPO / "tests" / "scripts" / "torch_reference"


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def table_row(table: str, rec: dict) -> str:
    """The table's line of `rec`'s workload."""
    workload, variant, batch, size, dtype = report.key(rec)
    cells = [workload, variant, str(batch), "x".join(map(str, size)), dtype]
    rows = [line for line in table.splitlines() if line.split()[:5] == cells]
    assert len(rows) == 1, (cells, table)
    return rows[0]


def test_gpu_suite_smoke(tmp_path):
    """README's smoke command: every workload has a JAX and a PyTorch record with positive times, and the table
    gives each pair's time ratio; `python -m benchmarks.report` prints the same table from the file."""
    out = tmp_path / "results.jsonl"
    proc = run(["-m", "benchmarks.gpu_suite", "--smoke", "--torch-reference", str(FAKE_REFERENCE), "--out", str(out)],
               timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = report.read_jsonl(out)
    workloads = gpu_suite.smoke_workloads()
    assert sorted((r["workload"], r["dtype"], r["impl"]) for r in records) == sorted(
        (w.name, w.dtype, impl) for w in workloads for impl in ("jax", "pytorch"))
    for rec in records:
        assert "error" not in rec and rec["median_s"] > 0 and rec["images_per_s"] > 0, rec
        assert len(rec["times_s"]) == 1 and all(t > 0 for t in rec["times_s"]), rec
    ours = [r for r in records if r["impl"] == "jax"]
    assert all(r["compile_s"] > 0 and r["backend"] == "cpu" and r["depth"] == 1 for r in ours)
    theirs = {report.key(r): r for r in records if r["impl"] == "pytorch"}
    assert len(theirs) == len(ours)
    for rec in ours:
        ratio = rec["median_s"] / theirs[report.key(rec)]["median_s"]
        assert table_row(proc.stdout, rec).endswith(f"{ratio:.2f}")
    saved = run(["-m", "benchmarks.report", str(out)], timeout=60)
    assert saved.returncode == 0 and saved.stdout.strip() == report.ratio_table(records), saved.stderr


def test_ratio_table_pairs_and_failures():
    """Rows pair JAX's and PyTorch's records of one workload; a lone or failed record leaves its cells open."""
    fields = {"variant": "vits", "batch": 1, "size": (28, 28), "dtype": "float32"}
    ours = report.record("dav2_forward", "jax", [0.02, 0.03, 0.04], device="cpu", peak_mem_bytes=None,
                         compile_s=1.5, **fields)
    theirs = report.record("dav2_forward", "pytorch", [0.06], device="cpu", peak_mem_bytes=2**30, **fields)
    lone = report.record("tio_mono_forward", "jax", [0.5], device="cpu", peak_mem_bytes=None, compile_s=3.0,
                         **{**fields, "size": (28, 56)})
    failed = report.failure("train_epoch1", "jax", "exit code 1: RESOURCE_EXHAUSTED", **fields)
    assert ours["median_s"] == 0.03 and abs(ours["images_per_s"] - 1 / 0.03) < 1e-9
    table = report.ratio_table([ours, theirs, lone, failed])
    assert table_row(table, ours).split()[5:] == ["30.0", "33.33", "-", "1.5", "60.0", "16.67", "1.00", "0.50"]
    assert table_row(table, lone).split()[-5:] == ["3.0", "-", "-", "-", "-"]
    assert "RESOURCE_EXHAUSTED" in table_row(table, failed)


def test_run_one_survives_failures_and_timeouts(tmp_path):
    """A run that fails, prints no record or runs out of time gives an error, never an exception."""
    env = dict(os.environ)
    rec, error = gpu_suite.run_one([sys.executable, "-c", "import sys; sys.exit('out of memory')"], 60, env)
    assert rec is None and error == "exit code 1: out of memory"
    rec, error = gpu_suite.run_one([sys.executable, "-c", "print('no record')"], 60, env)
    assert rec is None and error == "no record: no record"
    rec, error = gpu_suite.run_one([sys.executable, "-c", "import time; time.sleep(30)"], 0.5, env)
    assert rec is None and error == "timed out after 0.5 s"
    rec, error = gpu_suite.run_one([sys.executable, "-c", 'print("log"); print(\'{"median_s": 1}\')'], 60, env)
    assert rec == {"median_s": 1} and error == ""


def test_requirements_and_what_is_missing():
    """The requirements are pyproject's but JAX's; `missing` names the distributions that are not installed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = wheels.requirements()
    assert reqs == [d for d in deps if not d.startswith("jax")]
    assert {"tensorflow-datasets", "grain", "flax"} <= {wheels.name(r) for r in reqs}
    assert wheels.missing(["numpy>=2", "no-such-distribution>=1.0", "PyYAML", "tensorboardx"]) == \
        ["no-such-distribution"]


def test_suite_names_what_is_missing(tmp_path, monkeypatch, capsys):
    """Without the package and without wheels for it the suite stops at once with one line naming it."""
    monkeypatch.setattr(wheels, "requirements", lambda: ["numpy>=2", "no-such-distribution>=1.0"])
    monkeypatch.setattr(wheels, "WHEELS", tmp_path / "wheels")
    assert gpu_suite.main(["--smoke", "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: missing no-such-distribution ("), err
