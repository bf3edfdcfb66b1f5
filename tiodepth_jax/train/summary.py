"""TensorBoard logging through tensorboardX (no TensorFlow).

    with SummaryWriter("runs/x/logs") as w:
        w.scalar("loss/total", 0.25, step=10)
        w.scalars({"lr/param_group1": 1e-4, "lr/param_group2": 0.0}, step=10)
        w.image("val/depth", rgb_uint8_hwc, step=10)

tensorboardX is imported only when an enabled writer is made: it imports torch whenever torch is
installed, which no importer of the training loop should pay for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

FLUSH_SECS = 10


class SummaryWriter:
    """Scalars and images for TensorBoard, in a new event file in `logdir`.

    Events are written by tensorboardX's background thread, flushed every `FLUSH_SECS` and by `close()`.
    `enabled=False` (e.g. on non-zero processes) writes nothing and creates no file; so do writes after
    `close()`.
    """

    def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter as TBXWriter

            # the pid keeps two writers started in one second from sharing a file name
            self._writer = TBXWriter(os.fspath(logdir), flush_secs=FLUSH_SECS, filename_suffix=f".{os.getpid()}")

    def scalar(self, tag: str, value, step: int) -> None:
        """One scalar (anything `float()` accepts: Python / numpy / JAX scalars)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars at the same step."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def image(self, tag: str, image, step: int) -> None:
        """A uint8 (H, W, 3) RGB image, stored as PNG."""
        if self._writer is None:
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image summaries take (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        self._writer.add_image(tag, image, int(step), dataformats="HWC")

    def close(self) -> None:
        """Writes out pending events, stops the writer thread and closes the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
