"""The project's default XLA flags: added when absent, never over a user's own setting."""

import os
import subprocess
import sys

from tiodepth_jax.xla_flags import DEFAULTS, with_defaults

YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_appended_to_other_flags():
    assert with_defaults("") == f"--{YNN}={DEFAULTS[YNN]}"
    assert with_defaults(" --xla_dump_to=/tmp/x ") == f"--xla_dump_to=/tmp/x --{YNN}={DEFAULTS[YNN]}"


def test_a_flag_the_user_set_is_kept():
    assert with_defaults(f"--{YNN}=default --xla_dump_to=/tmp/x") == f"--{YNN}=default --xla_dump_to=/tmp/x"


def test_importing_the_package_sets_the_environment_before_jax_starts():
    code = ("import os, tiodepth_jax, jax, jax.numpy as jnp; jnp.ones(2).block_until_ready(); "
            "print(os.environ['XLA_FLAGS'])")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["--xla_force_host_platform_device_count=2", f"--{YNN}={DEFAULTS[YNN]}"]
