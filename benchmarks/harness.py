"""What the JAX benchmarks share: their common flags, reduced-depth models for smoke runs, compile and call
timing, and the record of a measurement (`benchmarks/report.py` defines its keys)."""

from __future__ import annotations

import argparse
import time
from typing import Callable

import jax

from benchmarks import report
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--depth and --json, the flags every JAX benchmark has."""
    parser.add_argument("--depth", type=int, default=None,
                        help="DINOv2 blocks of a reduced-depth trunk (smoke runs; default: the variant's own)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="append one JSON line per measured workload to FILE (keys: benchmarks/report.py)")


def reduced_taps(variant: str, depth: int | None) -> tuple[int, ...] | None:
    """The variant's tapped blocks clipped to a `depth`-block trunk; None for the variant's own trunk."""
    if depth is None:
        return None
    if depth < 1:
        raise ValueError(f"--depth must be positive, got {depth}")
    return tuple(min(t, depth - 1) for t in DepthAnythingV2Config.preset(variant).taps)


def aot_compile(fn, *args):
    """`fn.lower(*args).compile()` and its seconds (tracing, lowering and compilation)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_calls(call: Callable[[], object], *, iters: int, warmup: int) -> list[float]:
    """Seconds of each of `iters` calls of `call()` after `warmup` untimed ones; every call is waited for
    (`jax.block_until_ready` on what it returns)."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def time_forward(predictor, *inputs, iters: int, warmup: int) -> tuple[float, list[float]]:
    """Compile a predictor's jitted forward (`tiodepth_jax.inference.Jitted`) for `inputs` ahead of time and
    time its calls: (compile seconds, call seconds). A retrace during the calls is an error."""
    _, compile_s = aot_compile(predictor, *inputs)
    times = time_calls(lambda: predictor(*inputs), iters=iters, warmup=warmup)
    if predictor.num_traces != 1:
        raise RuntimeError(f"the timed calls retraced the forward ({predictor.num_traces} traces)")
    return compile_s, times


def peak_memory_bytes() -> int | None:
    """This process's peak memory on the first device, where the device reports it (GPUs, not CPUs)."""
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def jax_record(workload: str, times_s: list[float], *, compile_s: float, **fields) -> dict:
    """The record of a JAX measurement; `fields`: batch, size, dtype, variant (`report.record`) and depth."""
    return report.record(workload, "jax", times_s, device=jax.devices()[0].device_kind,
                         peak_mem_bytes=peak_memory_bytes(), compile_s=compile_s, jax=jax.__version__,
                         backend=jax.default_backend(), **fields)


def emit(rec: dict, json_path: str | None, note: str = "") -> None:
    """Print the record's line (with `note` after it) and append it to `json_path` if given."""
    print(report.describe(rec) + note, flush=True)
    if json_path:
        report.append_jsonl(json_path, [rec])
