"""The training command with faults injected at chosen global steps, just before the step runs:

    python tests/scripts/train_faulty.py 5:nan,7:SIGTERM,8:SIGTERM+SIGTERM,9:SIGKILL --config ... [overrides]

`nan` makes that step's network input NaN (its loss, gradients and updated parameters become NaN); a signal
name sends that signal to this process (`A+B` sends both at once). Used by tests/test_faults.py.
"""

import os
import signal
import sys

import numpy as np

from tiodepth_jax.train import loop
from tiodepth_jax.train.__main__ import main

faults = {int(step): what.split("+") for step, what in (f.split(":") for f in sys.argv[1].split(","))}
at = {"step": 0}
start, to_global = loop.Trainer._start, loop.to_global


def counting_start(self, resume):
    where = start(self, resume)
    at["step"] = where[2]  # the global step the run starts from
    return where


def faulty_to_global(batch, sharding):
    at["step"] += 1
    for fault in faults.get(at["step"], []):
        if fault == "nan":
            batch = {**batch, "color_s_aug": batch["color_s_aug"] * np.float32(np.nan)}
        else:
            os.kill(os.getpid(), signal.Signals[fault])
    return to_global(batch, sharding)


loop.Trainer._start, loop.to_global = counting_start, faulty_to_global
sys.exit(main(sys.argv[2:]))
