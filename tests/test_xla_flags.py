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


def test_the_default_keeps_ynnpack_to_standalone_dots():
    """Compiled after importing the package, a dot is a YNNPACK fusion and an element-wise chain with a
    reduction or a convolution is not; without the package (XLA's own default) all three are, so the flag has
    its effect."""
    code = ("import sys\n"
            "if sys.argv[1] == 'ours': import tiodepth_jax\n"
            "import jax, jax.numpy as jnp\n"
            "x = jnp.ones((1, 64, 64, 32)); w = jnp.ones((3, 3, 32, 32)); m = jnp.ones((64, 64))\n"
            "def count(f, *a): return jax.jit(f).lower(*a).compile().as_text().count('\"__ynn_fusion\"')\n"
            "conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
            " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "print(count(lambda m: m @ m, m), count(lambda x: (jnp.exp(x) * x + 1).sum(-1), x), count(conv, x, w))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    counts = {name: [int(n) for n in subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True,
                                                    text=True, check=True).stdout.split()]
              for name in ("ours", "xla")}
    assert counts == {"ours": [1, 0, 0], "xla": [1, 1, 1]}
