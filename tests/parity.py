"""Reading the PyTorch reference fixtures (see ../shared/fixtures/README.md) and comparing against them.

The fixture directory comes from $TIODEPTH_FIXTURES (default: ../shared/fixtures next to the repo).
Sets are discovered by their meta JSON, never by name; weights are regenerated with the fixtures' own recipe
module. Every array may be stored `whole`, `sampled` (`@shape/@stats/@idx/@val`) or as an `alias` of an
earlier one: read references through `compare`, `samples`, `flip_fraction`, `total` and `scalar`, which
handle all three, and `whole` only for inputs (always stored whole) or behind `is_whole`.

Test modules parametrize over `tio_params()` / `dav2_params()` (ids = set names); they skip, saying so,
only when the fixture directory holds no set of that family.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("TIODEPTH_FIXTURES", REPO.parent / "shared" / "fixtures"))
TIO_FAMILY = "TiO-Depth"            # family prefixes (`meta["family"]`)
DAV2_FAMILY = "Depth-Anything-V2"
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def discover() -> list[Path]:
    """Meta JSON files of every fixture set (those with a matching .npz)."""
    if not FIXTURES_DIR.is_dir():
        return []
    return sorted(p for p in FIXTURES_DIR.glob("*.json") if p.with_suffix(".npz").is_file())


@functools.lru_cache(maxsize=None)
def load_sets() -> tuple["FixtureSet", ...]:
    """Every discovered set, loaded once per session (shared by all test modules)."""
    return tuple(FixtureSet(p) for p in discover())


def family_sets(prefix: str) -> list["FixtureSet"]:
    return [fs for fs in load_sets() if fs.family.startswith(prefix)]


def tio_sets() -> list["FixtureSet"]:
    return family_sets(TIO_FAMILY)


def dav2_sets() -> list["FixtureSet"]:
    return family_sets(DAV2_FAMILY)


def set_params(prefix: str, sets: list | None = None) -> list:
    """pytest params, one per set of the family (id = the set's name); a single skipped param saying why when
    there is none (no fixture directory at all, or none of this family in it)."""
    sets = family_sets(prefix) if sets is None else sets
    if sets:
        return [pytest.param(fs, id=fs.name) for fs in sets]
    if not discover():
        why = f"fixture directory {FIXTURES_DIR} not found or empty (set TIODEPTH_FIXTURES)"
    else:
        why = f"no {prefix} fixture set in {FIXTURES_DIR} (set TIODEPTH_FIXTURES)"
    return [pytest.param(None, id=f"no-{prefix}-set", marks=pytest.mark.skip(reason=why))]


def tio_params() -> list:
    return set_params(TIO_FAMILY)


def dav2_params() -> list:
    return set_params(DAV2_FAMILY)


def load_recipe_module():
    """The fixtures' `fixture_weights.py`, imported from the fixture directory."""
    spec = importlib.util.spec_from_file_location("fixture_weights", FIXTURES_DIR / "fixture_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Comparison:
    name: str
    rel_l2: float
    tol: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.rel_l2 <= self.tol)  # NaN fails


class FixtureSet:
    """One fixture set: its meta, arrays and per-array tolerances."""

    def __init__(self, meta_path: Path):
        self.meta = json.loads(meta_path.read_text())
        self.name = self.meta["name"]
        self.family = self.meta["family"]
        self.arrays = np.load(meta_path.with_suffix(".npz"))
        self.entries = {e["name"]: e for e in self.meta["arrays"]}

    def state_dict(self, key: str | None = None) -> dict[str, np.ndarray]:
        """The model weights (or the recipe under `meta[key]`, e.g. 'vgg') from the recipe."""
        recipe = load_recipe_module()
        return recipe.make_state_dict(self.meta if key is None else self.meta[key])

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.entries if n.startswith(prefix)]

    def __repr__(self) -> str:
        return f"FixtureSet({self.name!r})"

    def sizes(self) -> list[str]:
        """The stored input sizes '<H>x<W>': TiO `in/<S>/...`, Depth-Anything-V2 `<S>/input` (in the order of
        `meta["inputs"]` where it lists them)."""
        found = {n.split("/")[1] for n in self.names("in/")} | \
            {n.split("/")[0] for n in self.entries if n.endswith("/input") and _SIZE.match(n.split("/")[0])}
        inputs = self.meta.get("inputs")
        listed = [s for s in inputs if s in found] if isinstance(inputs, dict) else []
        return listed + sorted(found - set(listed), key=self.hw)

    @staticmethod
    def hw(size: str) -> tuple[int, int]:
        h, w = _SIZE.match(size).groups()
        return int(h), int(w)

    def train_size(self) -> str | None:
        """The size of the training batch: the one with the augmented images (`in/<S>/color_s_aug`)."""
        return next((s for s in self.sizes() if f"in/{s}/color_s_aug" in self.entries), None)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def _resolved(self, name: str) -> dict:
        e, seen = self.entries[name], set()
        while e["storage"] == "alias":
            if e["name"] in seen:
                raise ValueError(f"alias cycle at {name}")
            seen.add(e["name"])
            e = self.entries[e["alias_of"]]
        return e

    def storage(self, name: str) -> str:
        """'whole' or 'sampled', aliases resolved."""
        return self._resolved(name)["storage"]

    def is_whole(self, name: str) -> bool:
        return self.storage(name) == "whole"

    def whole(self, name: str) -> np.ndarray:
        e = self._resolved(name)
        if e["storage"] != "whole":
            raise KeyError(f"{name} is stored sampled, not whole")
        return self.arrays[e["name"]]

    def whole_or(self, name: str, ours) -> tuple[np.ndarray, bool]:
        """(the stored array, True) when `name` is stored whole, else (`ours`, False): for a test that feeds a
        reference array as an input and, when it is only sampled, feeds our own computed value instead."""
        if self.is_whole(name):
            return np.asarray(self.whole(name)), True
        return np.asarray(ours), False

    def samples(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(flat C-order indices, reference values there): every element of a whole array, the stored
        samples of a sampled one."""
        e = self._resolved(name)
        if e["storage"] == "whole":
            a = np.asarray(self.arrays[e["name"]])
            return np.arange(a.size), a.reshape(-1)
        return np.asarray(self.arrays[e["name"] + "@idx"]), np.asarray(self.arrays[e["name"] + "@val"])

    def total(self, name: str) -> float:
        """Exact float64 sum of the whole array (the stored `@stats` sum when sampled)."""
        e = self._resolved(name)
        if e["storage"] == "whole":
            return math.fsum(np.asarray(self.arrays[e["name"]], np.float64).reshape(-1))
        return float(self.arrays[e["name"] + "@stats"][0])

    def scalar(self, name: str) -> float:
        """A one-element array's value."""
        idx, val = self.samples(name)
        assert int(np.prod(self.shape(name))) == 1 and len(idx) == 1, f"{name} is not a scalar"
        return float(val[0])

    def flip_fraction(self, name: str, ours, keep=None) -> tuple[float, int, int]:
        """(fraction, count, n) of the stored elements (all, or the samples) where `ours` != the reference,
        counted where `keep` (broadcastable to the shape) is True."""
        idx, val = self.samples(name)
        ours = np.asarray(ours)
        shape = self.shape(name)
        assert ours.shape == shape, f"{name}: shape {ours.shape} != reference {shape}"
        kept = np.ones(len(idx), bool) if keep is None else np.broadcast_to(keep, shape).reshape(-1)[idx]
        flips = int((ours.reshape(-1)[idx] != val)[kept].sum())
        n = int(kept.sum())
        return (flips / n if n else float("inf")), flips, n

    def tolerance(self, name: str, floor: float = 1e-4) -> float:
        """max(floor, 10 x the array's recorded float32 sensitivity) (fixtures/README.md)."""
        e = self._resolved(name)
        sens = self.entries[name].get("sensitivity") or e.get("sensitivity") or {}
        return max(floor, 10.0 * sens.get("rel_l2", 0.0))

    def compare(self, name: str, ours, tol: float | None = None, keep=None) -> Comparison:
        """Relative L2 error of `ours` (laid out like the reference) against the stored array.

        `keep`, a boolean array broadcastable to the shape, restricts the comparison to those elements
        (for sampled arrays, to the samples there; the whole-array sums are then not compared).
        """
        e = self._resolved(name)
        tol = self.tolerance(name) if tol is None else tol
        ours = np.asarray(ours, np.float64)
        shape = tuple(self.entries[name]["shape"])
        if ours.shape != shape:
            return Comparison(name, float("inf"), tol, f"shape {ours.shape} != reference {shape}")
        keep = np.ones(shape, bool) if keep is None else np.broadcast_to(keep, shape)
        if e["storage"] == "whole":
            ref = self.arrays[e["name"]].astype(np.float64)
            if not keep.any() and ours.size:
                return Comparison(name, float("inf"), tol, "no element kept")
            return Comparison(name, rel_l2(ours[keep], ref[keep]), tol)
        idx, val, stats = (self.arrays[e["name"] + s] for s in ("@idx", "@val", "@stats"))
        kept = keep.reshape(-1)[idx]
        if not kept.any():
            return Comparison(name, float("inf"), tol, "no sample kept")
        err = rel_l2(ours.reshape(-1)[idx][kept], val.astype(np.float64)[kept])
        if not keep.all():
            return Comparison(name, err, tol, f"samples {err:.2e} on {kept.sum()} kept elements")
        sum_abs = abs(np.abs(ours).sum() - stats[1]) / max(stats[1], 1e-30)
        sum_sq = abs((ours**2).sum() - stats[2]) / max(stats[2], 1e-30)
        return Comparison(name, float(np.max([err, sum_abs, sum_sq])), tol,  # np.max: a NaN fails
                          f"samples {err:.2e}, sum|x| {sum_abs:.2e}, sum x^2 {sum_sq:.2e}")


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    """Our array back in PyTorch's layout: conv kernels HWIO -> OIHW, linear kernels (in, out) -> (out, in)."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def nchw(x) -> np.ndarray:
    """NHWC (ours) -> NCHW (PyTorch reference layout)."""
    return np.asarray(x).transpose(0, 3, 1, 2)


def failures_table(results: list[Comparison]) -> str:
    return "\n".join(f"  {c.name}: rel L2 {c.rel_l2:.3e} > tol {c.tol:.1e} {c.detail}" for c in results if not c.ok)
