"""One-call GPU benchmark: inference and training speed of the JAX models, beside PyTorch's where present.

    python -m benchmarks.gpu_suite [--smoke] [--out FILE.jsonl] [--torch-reference DIR] [--only REGEX]
                                   [--budget SECONDS]

Workloads (random weights; the names and keys of benchmarks/report.py):

  dav2_forward        Depth-Anything-V2 S, B and L at 518x518, batch 1 and 8, float32 and bfloat16  12 runs
  tio_mono_forward    TiO-Depth (DINOv2-B) Mono path at 252x840, batch 1, float32 and bfloat16        2 runs
  tio_stereo_forward  its Stereo path on 252x840 pairs, the same                                      2 runs
  train_epoch1/21/31  a training iteration of the DINOv2-B config (configs/tiodepth_dinov2b.yaml's
                      model and optimiser, VGG19 perceptual loss) at 252x840, batch 8, with the groups
                      active at epochs 1, 21 and 31, float32 and bfloat16                              6 runs

Each run is a process of its own (bench_dav2, bench_tiodepth or bench_train with `--json`), so that a
failure or an out-of-memory ends only that run and the peak device memory is the run's own; it has a time
limit, and its record (or one with an `error`) is appended to `--out` as soon as it ends. With a PyTorch
reference build of the originals (`--torch-reference DIR`, by default benchmarks/torch_reference/ where it
exists; never committed), `DIR/bench_torch.py` runs each workload right after ours in PyTorch eager, on CUDA
(CPU with --smoke), and the final table gives the time ratio JAX / PyTorch. `--only` keeps the runs whose
label (as printed, e.g. "dav2_forward vitl b8 bfloat16") matches the regular expression. Missing requirements
are installed first from benchmarks/wheels/ (`benchmarks/fetch_wheels.sh`; benchmarks/wheels.py).

Budget: 8 minutes on one H200, JAX's runs and PyTorch's together. Compilation dominates: every run compiles
its own program, whose seconds each record keeps as `compile_s`, so a run's timed calls are few: forwards 2
warm-up + 10 timed calls (at most ~3 s: DAv2-L at batch 8 in float32), training iterations 1 + 3 (~2-3 s).
Estimates per run, not yet measured on an H200: ~5 s to start Python, JAX and CUDA and to build the model; a
forward compiles in ~5 s (~10 s a run, ~3 min for the 16); a training iteration (VGG19 loss, backward pass) in
~30-40 s, epoch 31's three groups the longest (~45 s a run, ~4.5 min for the 6); a PyTorch run compiles
nothing (~5-10 s, 2-3 min for its 22). That is ~7.5 min for JAX's runs alone and ~10 with the reference's:
with a reference the last runs may not fit until measured numbers allow a tighter list. All runs share a
persistent compilation cache, fresh for each suite run: the programs that initialise the models are compiled
once, and each timed program is compiled cold (no two runs time the same program). `--budget` (default 480 s)
holds the suite to 8 minutes whatever the real numbers: a run gets at most the time left, and the runs that no
longer fit are not started but recorded as such (`--only` runs them next). The exit status is 0 only if every
run finished.

`--smoke` runs the workloads at tiny sizes (1-block DINOv2-S, 28x28 / 28x56 inputs, batch 2, one timed
call; training at epochs 1 and 31 only) without a budget, its XLA programs compiled without optimisation: a
check of the suite itself on a CPU (tests/test_benchmarks.py), whose numbers measure nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import report, wheels

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO / "benchmarks" / "torch_reference"
DTYPES = ("float32", "bfloat16")
BUDGET_S = 480.0
# Random weights whose values do not matter: the RBG generator initialises them in a fraction of threefry's
# compile time. One compilation cache for the suite's runs (its directory is set per suite run).
RUN_ENV = {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
# --smoke: unoptimised programs (LLVM -O0 and XLA's older CPU emitters compile about twice as fast)
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


@dataclasses.dataclass(frozen=True)
class Workload:
    """One run: a workload of benchmarks/report.py at one variant, batch, size and dtype."""

    name: str
    variant: str
    batch: int
    size: tuple[int, int]
    dtype: str
    iters: int
    warmup: int
    timeout_s: float
    depth: int | None = None  # DINOv2 blocks of a reduced trunk (--smoke)

    @property
    def label(self) -> str:
        return f"{self.name} {self.variant} b{self.batch} {self.dtype}"

    @property
    def fields(self) -> dict:
        """The record fields that identify the run (`report.key`)."""
        return {"variant": self.variant, "batch": self.batch, "size": self.size, "dtype": self.dtype}


def full_workloads() -> list[Workload]:
    forward = {"iters": 10, "warmup": 2, "timeout_s": 150.0}
    train = {"iters": 3, "warmup": 1, "timeout_s": 300.0}
    return ([Workload("dav2_forward", v, b, (518, 518), d, **forward)
             for v in ("vits", "vitb", "vitl") for b in (1, 8) for d in DTYPES]
            + [Workload(f"tio_{m}_forward", "vitb", 1, (252, 840), d, **forward) for m in ("mono", "stereo")
               for d in DTYPES]
            + [Workload(f"train_epoch{e}", "vitb", 8, (252, 840), d, **train) for e in (1, 21, 31) for d in DTYPES])


def smoke_workloads() -> list[Workload]:
    tiny = {"batch": 2, "iters": 1, "warmup": 0, "timeout_s": 900.0, "depth": 1}
    return ([Workload("dav2_forward", "vits", size=(28, 28), dtype=d, **tiny) for d in DTYPES]
            + [Workload(f"tio_{m}_forward", "vits", size=(28, 56), dtype="float32", **tiny)
               for m in ("mono", "stereo")]
            # epoch 21's step (two groups) is built like epoch 31's (three): smoke compiles the ends only
            + [Workload(f"train_epoch{e}", "vits", size=(28, 56), dtype="float32", **tiny) for e in (1, 31)])


def jax_command(w: Workload, json_path) -> list[str]:
    """The command line of our benchmark of `w`, appending its record to `json_path`."""
    common = ["--size", *map(str, w.size), "--batch", str(w.batch), "--dtype", w.dtype, "--iters", str(w.iters),
              "--warmup", str(w.warmup), "--json", str(json_path)] + (["--depth", str(w.depth)] if w.depth else [])
    if w.name == "dav2_forward":
        return [sys.executable, "-m", "benchmarks.bench_dav2", "--variants", w.variant, *common]
    if m := re.fullmatch(r"tio_(mono|stereo|refine)_forward", w.name):
        return [sys.executable, "-m", "benchmarks.bench_tiodepth", "--modes", m.group(1).capitalize(),
                "--variant", w.variant, *common]
    if m := re.fullmatch(r"train_epoch(\d+)", w.name):
        return [sys.executable, "-m", "benchmarks.bench_train", "--epochs", m.group(1), "--variant", w.variant,
                *common]
    raise ValueError(f"no benchmark runs the workload {w.name!r}")


def torch_command(w: Workload, reference: Path, device: str) -> list[str]:
    """The command line of the PyTorch reference's run of `w` (its bench_torch.py prints one record)."""
    return [sys.executable, str(reference / "bench_torch.py"), "--workload", w.name, "--size", *map(str, w.size),
            "--batch", str(w.batch), "--dtype", w.dtype, "--iters", str(w.iters), "--warmup", str(w.warmup),
            "--device", device, "--variant", w.variant]


def last_json_line(text: str) -> dict | None:
    """The last line of `text` that is a JSON object, parsed; None if there is none."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_one(command: list[str], timeout_s: float, env: dict,
            json_path: Path | None = None) -> tuple[dict | None, str]:
    """Run `command` in the repository; its record (the last JSON line of `json_path`, else of its stdout)
    and an error ('' if it finished with a record). Never raises for the command's failure or time-out."""
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.1f} s"
    source = json_path.read_text() if json_path is not None and json_path.exists() else proc.stdout
    rec = last_json_line(source)
    if proc.returncode != 0 or rec is None:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else "no output"
        return None, f"exit code {proc.returncode}: {why}" if proc.returncode else f"no record: {why}"
    return rec, ""


def run_env(cache_dir: str, smoke: bool) -> dict:
    """The runs' environment: ours, with RUN_ENV's settings where not set, the suite's compilation cache and,
    with --smoke, the unoptimised programs."""
    env = {**RUN_ENV, **os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1"}
    if smoke:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    return env


def run_record(w: Workload, impl: str, command: list[str], timeout_s: float, env: dict,
               json_path: Path | None) -> dict:
    """Run one implementation's benchmark of `w`: its record (given `w`'s variant where it names none, as
    the reference's do), or a failure record; prints the outcome and, for a failure, the command."""
    start = time.perf_counter()
    rec, error = run_one(command, timeout_s, env, json_path)
    print(f"{error or 'done'} in {time.perf_counter() - start:.1f} s", flush=True)
    if error:
        print(f"    command: {' '.join(command)}", flush=True)
        return report.failure(w.name, impl, error, **w.fields)
    return {**rec, "variant": rec.get("variant") or w.variant}


def run_all(runs: list[Workload], reference: Path | None, env: dict, budget: float | None, out: Path,
            tmp: Path, smoke: bool) -> list[dict]:
    """Each workload with JAX, then with the reference if given: records appended to `out` as they come."""
    records, start = [], time.perf_counter()
    for i, w in enumerate(runs, 1):
        for impl in ["jax"] + (["pytorch"] if reference is not None else []):
            json_path = tmp / f"{i}.jsonl" if impl == "jax" else None
            command = (jax_command(w, json_path) if impl == "jax"
                       else torch_command(w, reference, "cpu" if smoke else "cuda"))
            left = None if budget is None else budget - (time.perf_counter() - start)
            print(f"[{i}/{len(runs)} at {time.perf_counter() - start:.0f} s] {w.label} {impl}:", end=" ", flush=True)
            if left is not None and left <= 0:
                print("not run (budget spent)", flush=True)
                rec = report.failure(w.name, impl, f"not run: the budget of {budget:.0f} s was spent", **w.fields)
            else:
                rec = run_record(w, impl, command, w.timeout_s if left is None else min(w.timeout_s, left), env,
                                 json_path)
            report.append_jsonl(out, [rec])
            records.append(rec)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no budget: a check on a CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON-lines file of the records (default: benchmarks/results/<UTC time>.jsonl)")
    parser.add_argument("--torch-reference", type=Path, default=None, metavar="DIR",
                        help=f"a PyTorch reference build with bench_torch.py (default: {DEFAULT_REFERENCE} "
                             "if it exists)")
    parser.add_argument("--only", default="", metavar="REGEX", help="the runs whose label matches REGEX")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all runs (default: {BUDGET_S:.0f}; none with --smoke)")
    args = parser.parse_args(argv)

    reqs = wheels.requirements()
    if absent := wheels.missing(reqs):
        print(f"installing {', '.join(absent)} from {wheels.WHEELS}", flush=True)
        absent = wheels.ensure(reqs, wheels.WHEELS)
    if absent:
        print(f"error: missing {', '.join(absent)} (no wheels in {wheels.WHEELS} for them: run "
              "benchmarks/fetch_wheels.sh where there is a package index)", file=sys.stderr)
        return 2
    reference = args.torch_reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_dir() else None)
    if reference is not None and not (reference / "bench_torch.py").is_file():
        print(f"error: {reference} has no bench_torch.py", file=sys.stderr)
        return 2
    runs = [w for w in (smoke_workloads() if args.smoke else full_workloads()) if re.search(args.only, w.label)]
    budget = args.budget if args.budget is not None else (None if args.smoke else BUDGET_S)
    out = args.out or REPO / "benchmarks" / "results" / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    print(f"{len(runs)} workloads with JAX{'' if reference is None else f' and PyTorch ({reference})'}, budget "
          f"{'none' if budget is None else f'{budget:.0f} s'}, records to {out}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        records = run_all(runs, reference, run_env(str(Path(tmp) / "jax_cache"), args.smoke), budget, out,
                          Path(tmp), args.smoke)
    failed = sum("error" in r for r in records)
    print(f"\n{report.ratio_table(records)}\n\n{len(records) - failed} of {len(records)} runs finished in "
          f"{time.perf_counter() - start:.0f} s; records in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
