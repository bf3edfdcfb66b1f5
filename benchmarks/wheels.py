"""The project's requirements on a GPU machine without a package index: which are missing, and their
installation from wheels downloaded beforehand (`benchmarks/fetch_wheels.sh`) into benchmarks/wheels/.

JAX (with CUDA) and PyTorch are the machine's own: they are not among the requirements, and an installation
from the wheels is constrained to the versions installed, so that it never replaces them.

    python -m benchmarks.wheels        # prints the requirements, one a line (what fetch_wheels.sh downloads)
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / "benchmarks" / "wheels"
MACHINE_OWN = ("jax", "jaxlib", "torch")  # never installed or replaced from the wheels


def name(requirement: str) -> str:
    """The distribution name of a requirement string ('tensorflow-datasets>=4.9' -> 'tensorflow-datasets')."""
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)


def requirements(pyproject=REPO / "pyproject.toml") -> list[str]:
    """The project's dependencies (pyproject.toml) but JAX's, which the GPU machine brings with CUDA."""
    deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    return [d for d in deps if not name(d).lower().startswith("jax")]


def missing(reqs: list[str]) -> list[str]:
    """The distribution names of the requirements that are not installed (versions are not checked)."""
    absent = []
    for req in reqs:
        try:
            importlib.metadata.distribution(name(req))
        except importlib.metadata.PackageNotFoundError:
            absent.append(name(req))
    return absent


def installed_constraints() -> list[str]:
    """`name==version` of the machine's own packages that are installed, to keep them as they are."""
    pins = []
    for dist in MACHINE_OWN:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return pins


def ensure(reqs: list[str], wheel_dir) -> list[str]:
    """Install the missing ones of `reqs` from `wheel_dir` (pip, no index); returns those still missing."""
    absent = missing(reqs)
    if absent and Path(wheel_dir).is_dir():
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
            constraints.write("\n".join(installed_constraints()) + "\n")
            constraints.flush()
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                            str(wheel_dir), "-c", constraints.name, *[r for r in reqs if name(r) in absent]],
                           check=False)
        absent = missing(reqs)
    return absent


if __name__ == "__main__":
    print("\n".join(requirements()))
