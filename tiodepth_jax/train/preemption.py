"""Stopping a run cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

The first signal asks the run to stop: it finishes the step in flight, saves a checkpoint with the data
position and exits with 128 + the signal number (143, 130). A second signal exits at once (the last complete
checkpoint is untouched: orbax writes into a temporary directory and renames it when done).

The signals are noticed at once even while the main thread is inside a long XLA call: Python's C-level
handler writes the signal number to the wake-up pipe, which a watcher thread reads. With several processes,
every one must stop after the same step (a checkpoint is a collective), so each step every process contributes
its flag to a global maximum on the devices, and the loop acts on the previous step's agreed value (already
computed, so reading it does not stall the device).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager installing the handlers; `poll()` once per step gives the agreed signal (or 0)."""

    def __init__(self, sharding):
        self.sharding = sharding  # the batch sharding: one flag per device, every process contributes
        self.received = 0
        self._agreed = None
        self._max = jax.jit(jnp.max, out_shardings=jax.sharding.NamedSharding(sharding.mesh,
                                                                             jax.sharding.PartitionSpec()))

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        self._previous = {s: signal.signal(s, lambda *_: None) for s in SIGNALS}
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), name="stop-signals", daemon=True).start()
        return self

    def __exit__(self, *exc):
        if hasattr(self, "_pipe"):
            signal.set_wakeup_fd(self._previous_wakeup)
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            os.close(self._pipe[1])  # the watcher's read returns b"" and it ends
        return False

    def _watch(self, read: int) -> None:
        while byte := os.read(read, 1):
            signum = byte[0]
            if signum not in SIGNALS:
                continue
            if self.received:
                log.warning(f"{signal.Signals(signum).name} again: exiting now")
                os._exit(128 + signum)
            self.received = signum
            log.warning(f"{signal.Signals(signum).name}: finishing the step in flight and saving a checkpoint "
                        "(send it again to exit at once)")
        os.close(read)

    def poll(self) -> int:
        """The signal number to stop on (0: none). One process: the signal received so far; several: the one
        every process agreed on at the previous call (this call starts the next agreement)."""
        if jax.process_count() == 1:
            return self.received
        n_local = len(self.sharding.addressable_devices)
        flags = jax.make_array_from_process_local_data(self.sharding, np.full((n_local,), self.received, np.int32))
        previous, self._agreed = self._agreed, self._max(flags)
        return 0 if previous is None else int(previous)
