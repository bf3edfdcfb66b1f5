"""User errors become one line and exit code 2; every other exception is a bug and keeps its traceback."""

from __future__ import annotations

import logging

import pytest

from tiodepth_jax.errors import InputError, InputNotFoundError, UserError, run_command, setup_logging


def test_user_errors_are_one_line(capsys):
    def body():
        raise InputError("cannot read\n  the file x.png")
    assert run_command(body) == 2
    assert capsys.readouterr().err == "error: cannot read the file x.png\n"


def test_bugs_keep_their_traceback():
    def body():
        raise ValueError("an internal shape mismatch")
    with pytest.raises(ValueError, match="shape mismatch"):
        run_command(body)


def test_exit_codes_and_builtin_types():
    assert run_command(lambda: None) == 0 and run_command(lambda: 3) == 3
    assert issubclass(InputNotFoundError, FileNotFoundError) and issubclass(InputError, ValueError)
    assert issubclass(InputNotFoundError, UserError)


def test_only_process_zero_logs_info(capsys):
    log = logging.getLogger("tiodepth_jax.some.module")
    setup_logging(process_index=1)
    log.info("progress")
    log.warning("a warning")
    setup_logging(process_index=0)
    log.info("progress on 0")
    err = capsys.readouterr().err
    assert "progress\n" not in err and "a warning" in err and "progress on 0" in err
