"""Reading the PyTorch reference fixtures (see ../shared/fixtures/README.md) and comparing against them.

The fixture directory comes from $TIODEPTH_FIXTURES (default: ../shared/fixtures next to the repo).
Sets are discovered by their meta JSON; weights are regenerated with the fixtures' own recipe module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("TIODEPTH_FIXTURES", REPO.parent / "shared" / "fixtures"))


def discover() -> list[Path]:
    """Meta JSON files of every fixture set (those with a matching .npz)."""
    if not FIXTURES_DIR.is_dir():
        return []
    return sorted(p for p in FIXTURES_DIR.glob("*.json") if p.with_suffix(".npz").is_file())


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

    def _resolved(self, name: str) -> dict:
        e = self.entries[name]
        return self.entries[e["alias_of"]] if e["storage"] == "alias" else e

    def whole(self, name: str) -> np.ndarray:
        e = self._resolved(name)
        if e["storage"] != "whole":
            raise KeyError(f"{name} is stored sampled, not whole")
        return self.arrays[e["name"]]

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
            return Comparison(name, rel_l2(ours[keep], ref[keep]), tol)
        idx, val, stats = (self.arrays[e["name"] + s] for s in ("@idx", "@val", "@stats"))
        kept = keep.reshape(-1)[idx]
        err = rel_l2(ours.reshape(-1)[idx][kept], val.astype(np.float64)[kept])
        if not keep.all():
            return Comparison(name, err, tol, f"samples {err:.2e} on {kept.sum()} kept elements")
        sum_abs = abs(np.abs(ours).sum() - stats[1]) / max(stats[1], 1e-30)
        sum_sq = abs((ours**2).sum() - stats[2]) / max(stats[2], 1e-30)
        return Comparison(name, max(err, sum_abs, sum_sq), tol,
                          f"samples {err:.2e}, sum|x| {sum_abs:.2e}, sum x^2 {sum_sq:.2e}")


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def nchw(x) -> np.ndarray:
    """NHWC (ours) -> NCHW (PyTorch reference layout)."""
    return np.asarray(x).transpose(0, 3, 1, 2)


def failures_table(results: list[Comparison]) -> str:
    return "\n".join(f"  {c.name}: rel L2 {c.rel_l2:.3e} > tol {c.tol:.1e} {c.detail}" for c in results if not c.ok)
