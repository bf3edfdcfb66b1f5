"""Benchmark records: one JSON object per measured workload, and the table that sets JAX beside PyTorch.

Every benchmark (bench_dav2, bench_tiodepth, bench_train and the PyTorch reference's bench_torch.py) describes
what it measured with the same keys, so that records of the two implementations, of two machines or of two
runs can be paired and compared line by line:

  workload        dav2_forward, tio_mono_forward, tio_stereo_forward, tio_refine_forward, train_epoch1/21/31
  impl            "jax" or "pytorch"
  variant         the DINOv2 variant of the model (vits, vitb, vitl, vitg); the reference's records leave it out
                  and the suite adds the one it asked for
  device          the device's kind, e.g. "NVIDIA H200" or "cpu"
  batch, size     inputs per call and their [H, W]
  dtype           the compute dtype, "float32" or "bfloat16" (parameters stay float32)
  times_s         seconds of each timed call (a forward, or one training iteration), after the warm-up calls
  median_s, mean_s  of times_s
  images_per_s    batch / median_s; an item is one input: an image, or a stereo pair for tio_stereo_forward
                  and the training iterations (whose samples are pairs)
  peak_mem_bytes  the process's peak device memory (null where the device does not report it: CPUs)
  compile_s       (jax) tracing and compilation of the timed program, ahead of time
  depth           (jax) the DINOv2 blocks of a reduced-depth trunk (smoke runs); null for the variant's own
  jax, backend    (jax) its version and platform ("gpu", "cpu"); the reference writes torch and threads
  error           only in the record of a workload that did not finish: what went wrong

`python -m benchmarks.report FILE.jsonl ...` prints the table of saved records.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

GiB = 2**30


def record(workload: str, impl: str, times_s: list[float], *, batch: int, size, dtype: str, variant: str | None,
           device: str, peak_mem_bytes: int | None, **extra) -> dict:
    """The record of `len(times_s)` timed calls of a workload; `extra`: the implementation's own keys."""
    median = statistics.median(times_s)
    return {"workload": workload, "impl": impl, "variant": variant, "device": device, "batch": batch,
            "size": list(size), "dtype": dtype, "median_s": median, "mean_s": statistics.fmean(times_s),
            "times_s": list(times_s), "images_per_s": batch / median, "peak_mem_bytes": peak_mem_bytes, **extra}


def failure(workload: str, impl: str, error: str, *, batch: int, size, dtype: str, variant: str | None) -> dict:
    """The record of a workload that did not finish (it failed, ran out of time or was not started)."""
    return {"workload": workload, "impl": impl, "variant": variant, "batch": batch, "size": list(size),
            "dtype": dtype, "error": error}


def key(rec: dict) -> tuple:
    """What two records must share to be the same workload: name, variant, batch, size and dtype."""
    return rec["workload"], rec.get("variant"), rec["batch"], tuple(rec["size"]), rec["dtype"]


def append_jsonl(path, records: list[dict]) -> None:
    """Append one JSON line per record to `path`."""
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def describe(rec: dict) -> str:
    """One line of a record for a benchmark's output: what was run and how fast."""
    what = f"{rec['workload']} {rec.get('variant') or ''} batch {rec['batch']} {'x'.join(map(str, rec['size']))} " \
           f"{rec['dtype']}"
    if "error" in rec:
        return f"{what}: {rec['error']}"
    compile_s = f"compile {rec['compile_s']:.1f} s, " if rec.get("compile_s") is not None else ""
    peak = f", peak {rec['peak_mem_bytes'] / GiB:.2f} GiB" if rec.get("peak_mem_bytes") is not None else ""
    return (f"{what}: {compile_s}median {1e3 * rec['median_s']:.1f} ms, mean {1e3 * rec['mean_s']:.1f} ms, "
            f"{rec['images_per_s']:.2f} images/s{peak}")


def _cells(rec: dict | None) -> list[str]:
    """ms, images/s and peak GiB of one implementation's record; '-' where it is missing, its error if it failed."""
    if rec is None:
        return ["-", "-", "-"]
    if "error" in rec:
        return [rec["error"][:40], "", ""]
    peak = rec.get("peak_mem_bytes")
    return [f"{1e3 * rec['median_s']:.1f}", f"{rec['images_per_s']:.2f}", "-" if peak is None else f"{peak / GiB:.2f}"]


def ratio(ours: dict | None, theirs: dict | None) -> float | None:
    """JAX's median time over PyTorch's for one workload (< 1: JAX is faster); None unless both finished."""
    if ours is None or theirs is None or "error" in ours or "error" in theirs:
        return None
    return ours["median_s"] / theirs["median_s"]


def ratio_table(records: list[dict]) -> str:
    """A row per workload (in the order of first appearance): JAX's and PyTorch's median ms, images/s and peak
    GiB, JAX's compile seconds and the time ratio JAX / PyTorch. Several records of one workload and
    implementation (e.g. two runs' files): the last one counts."""
    rows: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        rows.setdefault(key(rec), {})[rec["impl"]] = rec
    header = ["workload", "variant", "batch", "size", "dtype", "jax ms", "img/s", "GiB", "compile s",
              "torch ms", "img/s", "GiB", "jax/torch"]
    lines = [header]
    for (workload, variant, batch, size, dtype), impls in rows.items():
        ours, theirs = impls.get("jax"), impls.get("pytorch")
        compile_s = (ours or {}).get("compile_s")
        r = ratio(ours, theirs)
        lines.append([workload, variant or "-", str(batch), "x".join(map(str, size)), dtype, *_cells(ours),
                      "-" if compile_s is None else f"{compile_s:.1f}", *_cells(theirs),
                      "-" if r is None else f"{r:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print the table of benchmark records (JSON-lines files).")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    print(ratio_table([rec for path in args.files for rec in read_jsonl(path)]))


if __name__ == "__main__":
    main()
