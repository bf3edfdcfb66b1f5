"""XLA flags the project sets by default, unless the user's ``XLA_FLAGS`` already names them.

XLA reads ``XLA_FLAGS`` once, when JAX first creates a backend (the first array or ``jax.devices()``), so the
defaults are added to the environment when ``tiodepth_jax`` is imported; a process that used JAX before
importing it keeps the flags it started with. Setting a flag yourself, to any value, wins:
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=<value>`` restores or changes XLA's own choice.

``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` (XLA:CPU only; other backends ignore it): XLA's
YNNPACK path is kept to the dots that stand alone (the ViT's matmuls); convolutions go to Eigen and element-wise
and reduction fusions to XLA's own kernels. XLA's default also hands YNNPACK
- each convolution, which computes the weight gradient of a 3x3 convolution as one convolution with an
  image-sized window: 1.70 CPU-s per step for the decoder's full-resolution 64 -> 49 head at 252x840 against
  PyTorch's 0.27 (0.15 CPU-s through Eigen, bit-identical);
- fused element-wise and reduction chains, which it runs several times slower than XLA's loop kernels (the
  bilinear-sampling gradient of each of the 49 synthesis bins: 20 ms per bin).
Training iteration at 252x840 on a 2-core CPU, steps alternated with PyTorch's: epoch 1 took 0.92 of
PyTorch's time with ``-individual_convolution`` and 0.77 with this flag; epoch 31, 0.95 of its time with
``-individual_convolution``. (Both with a malloc policy since removed; without it epoch 1 measured 0.80-0.82 and
epoch 31 0.81 of PyTorch's time.)
"""

import os

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}


def with_defaults(xla_flags: str, defaults: dict[str, str] = DEFAULTS) -> str:
    """``xla_flags`` with ``--name=value`` appended for each default the string does not already set."""
    given = {token.lstrip("-").split("=", 1)[0] for token in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in defaults.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply_defaults() -> None:
    """Add the project's defaults to ``os.environ['XLA_FLAGS']`` (before JAX creates its backends)."""
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
