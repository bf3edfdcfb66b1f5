"""Test-wide JAX settings.

Random initialisation with the default threefry PRNG compiles one slow XLA program per parameter
shape on the CPU (~1 s each); the tests only need some random values, so they use the RBG generator.
"""

import jax

jax.config.update("jax_default_prng_impl", "unsafe_rbg")
