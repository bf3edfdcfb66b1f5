#!/usr/bin/env bash
# Download, where there is a package index, the wheels that `python -m benchmarks.gpu_suite` installs on a GPU
# machine without one: the project's requirements but JAX's (python -m benchmarks.wheels) and what they
# depend on, for CPython PYTHON_VERSION on manylinux x86_64, into benchmarks/wheels/ (ignored by git).
#
#   benchmarks/fetch_wheels.sh [PYTHON_VERSION [JAX_VERSION]]
#
# PYTHON_VERSION: the GPU machine's, e.g. 3.12 (default: this python3's). JAX_VERSION: the GPU machine's jax,
# e.g. 0.10.2, so that flax, optax and orbax come in versions that work with it (default: the newest ones).
# Copy benchmarks/wheels/ to the GPU machine with the checkout. The suite installs only what is missing there
# and never replaces the machine's jax, jaxlib or torch (which pip downloads too, as dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m benchmarks.wheels > "$tmp/requirements.txt"
if [ -n "${2:-}" ]; then printf 'jax==%s\njaxlib==%s\n' "$2" "$2" > "$tmp/constraints.txt"; else : > "$tmp/constraints.txt"; fi

# Requirements published as source only (e.g. promise, of tensorflow-datasets) become wheels here first: they
# are pure Python, so these wheels install on any version. The download then takes the rest as binaries.
python3 -m pip wheel --wheel-dir "$tmp/built" --requirement "$tmp/requirements.txt" \
    --constraint "$tmp/constraints.txt" --quiet
mkdir -p benchmarks/wheels
find "$tmp/built" -name '*-none-any.whl' -exec cp {} benchmarks/wheels/ \;
python3 -m pip download --dest benchmarks/wheels --find-links benchmarks/wheels \
    --requirement "$tmp/requirements.txt" --constraint "$tmp/constraints.txt" \
    --only-binary=:all: --implementation cp --python-version "$version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64
echo "wheels for CPython $version in benchmarks/wheels/"
