"""Compiles announced and timed (train/progress.py), ahead of the first call that would otherwise pay for them."""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tiodepth_jax.train import progress


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    """The messages progress logs (whatever the `tiodepth_jax` logger's handlers and level are)."""
    logger, handler = logging.getLogger(progress.__name__), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_compile_ahead_of_the_first_call_is_announced_timed_and_not_repeated(lines):
    """As the trainer's step: explicit shardings, a donated state; its calls then run the compiled program."""
    mesh = jax.make_mesh((1,), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(lambda state, x, factor: (state + factor * x.sum(), x.mean()), in_shardings=(rep, rep, rep),
                   out_shardings=(rep, rep), donate_argnums=(0,))
    state, x = jax.device_put(jnp.zeros(3), rep), jax.device_put(jnp.ones((2, 3)), rep)
    with progress.compiling("the tiny step (first step of epoch 1)"):
        step.lower(state, x, jnp.float32(0.5)).compile()
    assert lines[0] == "compiling the tiny step (first step of epoch 1) ..."
    assert re.fullmatch(r"compiled in \d+\.\d s", lines[1]) and len(lines) == 2
    compiles = []

    def listener(event, *_, **__):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for factor in (0.5, 0.25):  # a new epoch's factors: the same program
            state, _ = step(state, x, jnp.float32(factor))
        jax.block_until_ready(state)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == [] and float(state[0]) == pytest.approx(4.5)


def test_a_failing_compile_says_nothing_more(lines):
    with pytest.raises(RuntimeError, match="no room"), progress.compiling("a program"):
        raise RuntimeError("no room")
    assert lines == ["compiling a program ..."]


@pytest.mark.parametrize("value, level", [(None, 0), ("2", 2), ("3", 3), ("x", 0)])
def test_the_cpp_log_level_set_back_after_a_compile_is_xlas(monkeypatch, value, level):
    if value is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", value)
    assert progress.cpp_min_log_level() == level
