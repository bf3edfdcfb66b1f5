"""Compiles said as what they are: a two-minute compile of the training step is a log line and a duration, not
a first step that seems to hang (with a progress-bar ETA of an hour) under an XLA "error".

    with compiling("the training step for stages Mono+Stereo (first step of epoch 21)"):
        jitted.lower(*args).compile()         # jit's calls with these arguments then run this executable

logs ``compiling the training step ... ...`` and, when the block ends, ``compiled in 83.2 s``.

XLA's slow-compile alarm (`SlowCompilationAlarm`, xla/service/slow_operation_alarm.cc) prints "Very slow
compile? If you want to file a bug, run with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo ..." as a C++ LOG(ERROR)
once the code generation of a compile (the CPU / GPU compiler's RunBackend) has taken 2 minutes, and "The
operation took ..." when it ends; the same alarm reports a constant folding that takes over 1 s. The 2 minutes
are a constant of the release build: no XLA flag or environment variable changes them or turns the alarm off.
The one knob is the C++ minimum log level of the whole process (TF_CPP_MIN_LOG_LEVEL, at run time
`absl_set_min_log_level`): inside `compiling` it is FATAL, so the alarm stays quiet while the two lines above
say what is happening, and afterwards it is TF_CPP_MIN_LOG_LEVEL's again. A compile that fails still raises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from jaxlib import utils as jaxlib_utils

FATAL = 3  # absl's severities: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
log = logging.getLogger(__name__)


def cpp_min_log_level() -> int:
    """The C++ minimum log level XLA starts with: TF_CPP_MIN_LOG_LEVEL, or INFO when it is unset or not a
    number (XLA's logging initialiser reads it the same way)."""
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    return int(value) if value.isdigit() else 0


@contextlib.contextmanager
def compiling(what: str):
    """Log ``compiling <what> ...`` and then how long the block took, with XLA's C++ logs below FATAL off
    meanwhile (see the module docstring)."""
    log.info(f"compiling {what} ...")
    start = time.perf_counter()
    jaxlib_utils.absl_set_min_log_level(FATAL)
    try:
        yield
    finally:
        jaxlib_utils.absl_set_min_log_level(cpp_min_log_level())
    log.info(f"compiled in {time.perf_counter() - start:.1f} s")
