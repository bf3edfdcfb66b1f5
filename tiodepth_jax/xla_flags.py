"""XLA flags the project sets by default, unless the user's ``XLA_FLAGS`` already names them.

XLA reads ``XLA_FLAGS`` once, when JAX first creates a backend (the first array or ``jax.devices()``), so the
defaults are added to the environment when ``tiodepth_jax`` is imported; a process that used JAX before
importing it keeps the flags it started with. Setting a flag yourself, to any value, wins:
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=<value>`` restores or changes XLA's own choice.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` (XLA:CPU only; other backends ignore it).
By default XLA:CPU hands each convolution on its own to its YNNPACK path, which computes the weight gradient
of a 3x3 convolution as one convolution with an image-sized window: for the full-resolution heads of the
decoder (64 -> 49 channels at 252x840) that took 1.70 CPU-s per step against PyTorch's 0.27. Without that
fusion type the same gradient takes 0.15 CPU-s with a bit-identical result, and a whole training iteration
(epoch 31, 252x840) about 0.63 of the time.
"""

import os

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}


def with_defaults(xla_flags: str, defaults: dict[str, str] = DEFAULTS) -> str:
    """``xla_flags`` with ``--name=value`` appended for each default the string does not already set."""
    given = {token.lstrip("-").split("=", 1)[0] for token in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in defaults.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply_defaults() -> None:
    """Add the project's defaults to ``os.environ['XLA_FLAGS']`` (before JAX creates its backends)."""
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
