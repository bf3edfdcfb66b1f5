"""Errors about what the user gave, and how the commands report them and log.

A `UserError` is a problem with the user's input: a missing or unreadable file, a bad config value, a
dataset that was not built, a checkpoint that does not fit, a conversion mismatch. The commands print it
as one line, ``error: ...``, and exit with code 2. Every other exception is a bug and keeps its traceback.
The subclasses keep the builtin type a caller may catch (``except FileNotFoundError``).

Library modules log through `logging.getLogger(__name__)` (under the ``tiodepth_jax`` logger); commands
print their results. `run_command` shows INFO messages of process 0 only, WARNING and above of every process.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

LOGGER = "tiodepth_jax"


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class InputError(UserError, ValueError):
    """An input that exists but is wrong: unreadable, inconsistent, of the wrong kind."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input path that does not exist."""


class InputExistsError(UserError, FileExistsError):
    """An output path that exists and must not be overwritten."""


class NonFiniteError(UserError, FloatingPointError):
    """Training produced a non-finite loss or state: a diverged run rather than a bug in the program."""


class StorageError(UserError, OSError):
    """A write the storage refused (disk full, over quota, permission denied, read-only): not a bug, so one
    line without a traceback; still an `OSError` with its `errno`, for a caller that tells ENOSPC apart."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message is emitted (test capture, redirections)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging(process_index: int = 0) -> None:
    """Messages of the ``tiodepth_jax`` loggers on stderr, as plain lines; INFO on process 0 only."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if process_index == 0 else logging.WARNING)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's `body` with logging set up; a `UserError` becomes ``error: <one line>`` on stderr and
    exit code 2 (the command's exit code otherwise: `body`'s return value, 0 for None)."""
    setup_logging()
    try:
        return body() or 0
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
