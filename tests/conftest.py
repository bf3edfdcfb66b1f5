"""Test-wide JAX settings.

Random initialisation with the default threefry PRNG compiles one slow XLA program per parameter
shape on the CPU (~1 s each); the tests only need some random values, so they use the RBG generator.
Training subprocesses share one persistent compilation cache (`compile_cache`).
"""

import jax
import pytest

jax.config.update("jax_default_prng_impl", "unsafe_rbg")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> dict:
    """Environment variables that make training subprocesses share JAX's persistent compilation cache: the
    tiny test runs compile the same programs, and only the first run of a session pays for it."""
    # the RBG generator, as here: the model's initialisation compiles in 1/3 of threefry's time
    return {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg",
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@pytest.fixture(scope="session")
def mono_reference(tmp_path_factory, compile_cache) -> list[dict]:
    """losses.jsonl of one uninterrupted run (6 steps) of the tiny Mono config of test_faults.py and
    test_multihost.py, which compare their runs with it; it fills `compile_cache` with the programs of their
    1-process runs."""
    from tests.test_faults import losses, train
    workdir = tmp_path_factory.mktemp("reference")
    code, out = train(workdir, env=compile_cache)
    assert code == 0, out[-3000:]
    entries = losses(workdir)
    assert [e["step"] for e in entries] == list(range(1, 7))
    return entries
