"""Steps per second of the training loop (`python -m tiodepth_jax.train`) on a config, after compilation.

    python -m benchmarks.bench_loop --config configs/demo.yaml [key=value ...] [--epochs 2] [--repeats 3]

Runs the training command in-process with `epochs` epochs in a temporary workdir, `repeats` times, and times
the loop by the pace at which it takes batches from the data iterator: the steady-state step time is the
median interval between two batches of the last epoch (every program is compiled by then). Prints one JSON
line per run and one with the median over all runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from tiodepth_jax.train import loop
from tiodepth_jax.train.__main__ import main as train_main


class Timed:
    """An epoch's batch iterator that records (epoch, time) of every batch it hands out."""

    def __init__(self, batches, epoch: int, times: list):
        self.it, self.epoch, self.times = iter(batches), epoch, times

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append((self.epoch, time.perf_counter()))
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def run_once(config: str, overrides: list[str], epochs: int) -> list[float]:
    times: list = []
    batches = loop.batches
    loop.batches = lambda cfg, samples, epoch: Timed(batches(cfg, samples, epoch), epoch, times)
    with tempfile.TemporaryDirectory() as workdir:
        code = train_main(["--config", config, *overrides, f"epochs={epochs}", f"workdir={workdir}",
                           "val.every_n_epochs=0", "val.at_start=false", "checkpoint.every_n_epochs=0"])
    assert code == 0, code
    last = [t for e, t in times if e == epochs]
    return [b - a for a, b in zip(last, last[1:])]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    intervals = []
    for r in range(args.repeats):
        step_times = run_once(args.config, args.overrides, args.epochs)
        intervals += step_times
        print(json.dumps({"run": r, "median_step_s": statistics.median(step_times),
                          "steps_per_s": 1 / statistics.median(step_times), "steps": len(step_times)}), flush=True)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "median_step_s": statistics.median(intervals),
                      "steps_per_s": 1 / statistics.median(intervals), "intervals": len(intervals)}))


if __name__ == "__main__":
    main()
