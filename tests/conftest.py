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
